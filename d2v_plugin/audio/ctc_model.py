"""``data2vec_audio_ctc``: CTC fine-tuning of a data2vec speech model, as fairseq fine-tunes wav2vec 2.0.

The encoder is fairseq's ``Wav2VecEncoder``: it loads the pre-training checkpoint given by
``model.w2v_path`` (ours, or one saved by fairseq's data2vec, e.g. the released audio checkpoints),
rebuilds the ``data2vec_audio`` model registered by this plugin, calls its
``remove_pretraining_modules`` (drops the EMA teacher and the regression head), and applies the
fine-tuning options wav2vec 2.0 users know: ``feature_grad_mult: 0`` freezes the conv feature
encoder, ``freeze_finetune_updates``, time/channel masks (``mask_prob``, ``mask_channel_prob``),
``layerdrop``, ``final_dropout``. A linear layer maps to the letter vocabulary for fairseq's ``ctc``
criterion. This file only registers the data2vec name with data2vec's fine-tuning defaults.
"""

from dataclasses import dataclass, field

from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

from d2v_plugin.core.validation import validate


@dataclass
class Data2VecAudioCtcConfig(Wav2Vec2CtcConfig):
    feature_grad_mult: float = field(
        default=0.0, metadata={"help": "0 freezes the conv feature encoder (data2vec/wav2vec 2.0 fine-tuning)"}
    )


@register_model("data2vec_audio_ctc", dataclass=Data2VecAudioCtcConfig)
class Data2VecAudioCtc(Wav2VecCtc):
    """CTC head on a pre-trained ``data2vec_audio`` encoder. Output: ``encoder_out (T, B, V)`` logits."""

    @classmethod
    def build_model(cls, cfg: Data2VecAudioCtcConfig, task):
        validate(cfg, "data2vec_audio_ctc")  # option ranges and the run's (d2v_plugin/core/validation.py)
        return super().build_model(cfg, task)
