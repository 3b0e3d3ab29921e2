"""Speech: ``data2vec_audio`` (pre-training), ``data2vec_audio_ctc`` (CTC fine-tuning), the ``audio_ctc`` task
that makes ``fairseq-generate`` decode CTC, the ``wer_ler`` scorer, and the one audio-manifest reader."""

from d2v_plugin.audio import ctc_model, model, task, wer_scorer  # noqa: F401  (registration)
