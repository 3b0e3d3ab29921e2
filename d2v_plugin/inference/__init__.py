"""Inference for users who are not training: representations (``d2v-extract``) and quick CTC transcripts
(``d2v-transcribe``) from a checkpoint, ours or fairseq's reference data2vec.

Python API::

    from d2v_plugin.inference.extract import extract
    from d2v_plugin.inference.transcribe import transcribe
    extract("checkpoint.pt", "wavs/", "features/", layer=3, pool="mean")   # -> features/index.tsv
    transcribe("ctc.pt", ["a.wav", "b.wav"])                               # -> [("a.wav", "HELLO"), ...]

``checkpoints.py`` loads any supported checkpoint (``load_model``: the model and what its inputs need),
``inputs.py`` lists and reads inputs as the training tasks read them, ``extract.py`` (also ``encode_batch``:
the representations of in-memory inputs) and ``transcribe.py`` hold the two commands. Nothing is imported
here, so ``python -m d2v_plugin.inference.extract`` and the modules' names stay unshadowed.
"""
