"""``data2vec_audio_classification``: utterance classification (speaker, accent, sound events) on a pre-trained
``data2vec_audio`` encoder (data2vec 1.0 or 2.0), for the ``utterance_classification`` task and criterion.

The encoder is fairseq's ``Wav2VecEncoder``, exactly as ``data2vec_audio_ctc`` uses it
(:mod:`d2v_plugin.audio.ctc_model`): it loads ``model.w2v_path`` (ours, or a checkpoint of fairseq's data2vec),
rebuilds ``data2vec_audio`` from the checkpoint's own config and keeps that config in ``model.w2v_args`` (so a
fine-tuned checkpoint reloads without the pre-training one), drops the teacher and regression head, and applies
the wav2vec 2.0 fine-tuning options: ``feature_grad_mult`` (0 freezes the conv feature encoder),
``freeze_finetune_updates``, ``layerdrop``, ``dropout`` / ``attention_dropout`` / ``activation_dropout`` /
``dropout_input`` / ``final_dropout``, time and channel masks (``apply_mask``), ``no_pretrained_weights``.
Reusing it rather than :func:`d2v_plugin.core.finetune.pretrained_config` (the text and image classifiers' way)
keeps one loader and one option set for every speech fine-tuning model, and the checkpoint layout (``w2v_args``,
``w2v_encoder.w2v_model.*``) that d2v-export-hf and fairseq's tools already read for CTC.

The head is Hugging Face's ``Data2VecAudioForSequenceClassification`` head, so it exports exactly:
``projector`` (``D -> classifier_proj_size``) on every frame, pooling over the utterance's own frames, and
``classifier`` (``classifier_proj_size -> classes``). ``pooling=mean`` averages the non-padded frames;
``pooling=attentive`` weights them by a learned score (``attention``: one linear layer, softmax over the
utterance's frames; no HF equivalent).

Padding: pooling never reads padded frames, but in a padded batch the encoder's stacked positional convolutions
(``pos_conv_depth > 1``) still carry padding into the real frames of the shorter utterances (README, "Feature
extraction"); training, validation and HF's model all run that way, so an utterance's logits depend slightly on
its batch.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2_asr import Linear, Wav2Vec2AsrConfig, Wav2VecEncoder

from d2v_plugin.core.validation import validate

POOLING = ChoiceEnum(["mean", "attentive"])


@dataclass
class Data2VecAudioClassificationConfig(Wav2Vec2AsrConfig):
    feature_grad_mult: float = field(
        default=0.0, metadata={"help": "0 freezes the conv feature encoder (data2vec/wav2vec 2.0 fine-tuning)"}
    )
    pooling: POOLING = field(
        default="mean",
        metadata={"help": "mean: average of the utterance's frames (HF's head; exports); attentive: a learned "
                          "softmax weighting of its frames"},
    )
    classifier_proj_size: int = field(
        default=256, metadata={"help": "width of the projector applied to every frame before pooling (HF's name)"}
    )


def pool(x: Tensor, padding: Optional[Tensor], scorer: Optional[nn.Module] = None) -> Tensor:
    """Frames ``x (B, T, P)`` -> ``(B, P)`` over each utterance's own frames (``padding (B, T)``, True = padded;
    None: no padding). Without ``scorer`` the mean; with it the softmax(``scorer(x) (B, T, 1)``)-weighted sum."""
    if scorer is None:
        if padding is None:
            return x.mean(dim=1)
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
    scores = scorer(x).squeeze(-1).float()
    if padding is not None:
        scores = scores.masked_fill(padding, float("-inf"))
    weights = torch.softmax(scores, dim=1).to(x.dtype)
    return torch.einsum("bt,btp->bp", weights, x)


@register_model("data2vec_audio_classification", dataclass=Data2VecAudioClassificationConfig)
class Data2VecAudioClassification(BaseFairseqModel):
    """Pre-trained speech encoder + projector + pooling + classifier. Output: logits ``(B, classes)``."""

    def __init__(self, cfg: Data2VecAudioClassificationConfig, w2v_encoder: Wav2VecEncoder, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.w2v_encoder = w2v_encoder
        dim = w2v_encoder.w2v_model.cfg.encoder_embed_dim
        self.projector = Linear(dim, cfg.classifier_proj_size)
        self.attention = Linear(cfg.classifier_proj_size, 1) if cfg.pooling == "attentive" else None
        self.classifier = Linear(cfg.classifier_proj_size, num_classes)

    @classmethod
    def build_model(cls, cfg: Data2VecAudioClassificationConfig, task):
        validate(cfg, "data2vec_audio_classification")  # option ranges and the run's (core/validation.py)
        num_classes = getattr(task, "num_classes", 0)
        if num_classes < 1:
            raise ValueError(f"model data2vec_audio_classification needs task utterance_classification with a label "
                             f"dictionary (dict.lbl.txt, python -m manifests.utterance_labels); task "
                             f"{type(task).__name__} has {num_classes or 'no'} classes")
        return cls(cfg, Wav2VecEncoder(cfg), num_classes)

    def forward(self, source: Tensor, padding_mask: Optional[Tensor] = None, **unused) -> Tensor:
        """``source (B, S)`` waveforms, ``padding_mask (B, S)`` (True = padding) -> logits ``(B, classes)``."""
        out = self.w2v_encoder(source, padding_mask)  # encoder_out (T, B, D), padding_mask (B, T) or None
        frames = self.projector(out["encoder_out"].transpose(0, 1))  # (B, T, P)
        return self.classifier(pool(frames, out["padding_mask"], self.attention))
