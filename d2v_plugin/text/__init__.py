"""Text: ``data2vec_text`` (pre-training on fairseq's ``masked_lm`` task) and ``data2vec_text_classification``
(fine-tuning with fairseq's ``sentence_prediction``)."""

from d2v_plugin.text import classification, model  # noqa: F401  (registration)
