"""What every data2vec model shares, whatever the modality: options (``config``), the EMA teacher
(``ema_teacher``), targets from its top-K blocks (``targets``), masks (``masking``), the one ``data2vec``
criterion (``criterion``), the forward skeleton and checkpoint surgery (``teacher_student``) and loading a
pre-training checkpoint for fine-tuning (``finetune``)."""

from d2v_plugin.core import criterion  # noqa: F401  (registers the `data2vec` criterion)
