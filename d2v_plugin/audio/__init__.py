"""Speech: ``data2vec_audio`` (pre-training), ``data2vec_audio_ctc`` (CTC fine-tuning), the ``audio_ctc`` task
that makes ``fairseq-generate`` decode CTC, the ``wer_ler`` scorer, the one audio-manifest reader, and utterance
classification (``data2vec_audio_classification``; task and criterion ``utterance_classification``)."""

from d2v_plugin.audio import ctc_model, model, task, wer_scorer  # noqa: F401  (registration)
from d2v_plugin.audio import classification, classification_criterion, classification_task  # noqa: F401
