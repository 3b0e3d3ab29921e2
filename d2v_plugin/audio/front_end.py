"""The audio front end of both data2vec versions: waveform -> conv feature encoder -> layer norm -> projection.

Parameter names are wav2vec 2.0's (``feature_extractor.*``, ``layer_norm``, ``post_extract_proj``), so
fairseq's data2vec / wav2vec 2.0 checkpoints load as they are and data2vec_multi's map one to one.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq.modules import GradMultiply, LayerNorm

from d2v_plugin.audio.conv_features import ConvFeatureExtractor, parse_conv_layers


def conv_output_lengths(lengths: Tensor, conv_layers: List[Tuple[int, int, int]]) -> Tensor:
    """Frames produced by the conv feature encoder for ``lengths`` input samples."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.long()


class ConvFrontEnd:
    """Mixed into an audio model: :meth:`build_front_end` from ``__init__``, :meth:`encode_features` in forward."""

    def build_front_end(self, cfg) -> None:
        """Uses ``conv_feature_layers``, ``extractor_mode``, ``conv_bias``, ``feature_grad_mult``, ``encoder_embed_dim``."""
        self.conv_layers = parse_conv_layers(cfg.conv_feature_layers)  # never eval: it comes from checkpoints too
        extractor_dim = self.conv_layers[-1][0]
        # fairseq's conv feature encoder (same modules and weights) with a faster forward on CPU
        self.feature_extractor = ConvFeatureExtractor(
            conv_layers=self.conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        if cfg.feature_grad_mult == 0:
            # A frozen feature encoder: no gradients, no optimizer state, nothing for DDP to wait for.
            self.feature_extractor.requires_grad_(False)
        self.layer_norm = LayerNorm(extractor_dim)
        self.post_extract_proj = nn.Linear(extractor_dim, cfg.encoder_embed_dim)

    def encode_features(self, source: Tensor, padding_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Waveform ``(B, S)`` -> projected conv features ``(B, T, D)`` and frame padding ``(B, T)``."""
        if self.cfg.feature_grad_mult > 0:
            features = self.feature_extractor(source)
            if self.cfg.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.cfg.feature_grad_mult)
        else:
            with torch.no_grad():
                features = self.feature_extractor(source)
        features = self.layer_norm(features.transpose(1, 2))
        frame_padding = self.frame_padding(features, padding_mask)
        if self.training:
            self._feature_var = self.feature_variation(features.detach(), frame_padding)
        return self.post_extract_proj(features), frame_padding

    def frame_padding(self, features: Tensor, padding_mask: Optional[Tensor]) -> Optional[Tensor]:
        """``(B, T)`` bool padding of the conv frames from the ``(B, S)`` sample padding (None: none)."""
        if padding_mask is None or not padding_mask.any():
            return None
        frames = conv_output_lengths((~padding_mask).long().sum(-1), self.conv_layers)
        positions = torch.arange(features.size(1), device=features.device)
        return positions.unsqueeze(0) >= frames.unsqueeze(1)

    @staticmethod
    def feature_variation(features: Tensor, frame_padding: Optional[Tensor]) -> float:
        """How much the (layer-normed) conv features change over time: per-channel std over the frames
        of each utterance, averaged. Near 0 means the feature encoder collapsed to a constant, which the
        target_var/pred_var checks cannot see because the targets are instance-normalised (fairseq#5239).
        """
        if frame_padding is not None:
            keep = (~frame_padding).unsqueeze(-1).float()
            n = keep.sum(1).clamp(min=2)
            mean = (features * keep).sum(1) / n
            var = (((features - mean.unsqueeze(1)) ** 2) * keep).sum(1) / (n - 1)
        else:
            var = features.var(dim=1)
        return var.clamp(min=0).sqrt().mean().item()
