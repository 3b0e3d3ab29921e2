"""wav2vec 2.0's conv feature encoder with the same weights and math, laid out for speed on CPU.

fairseq's :class:`~fairseq.models.wav2vec.wav2vec2.ConvFeatureExtractionModel` normalises every conv
output over channels (``extractor_mode=layer_norm``, data2vec's setting) by transposing ``(B, C, T)`` to
``(B, T, C)``, applying ``LayerNorm`` and transposing back. The tensors are large (base model, 10 s of audio:
4 x 512 x 8000), and each transpose makes the next kernel copy them: the layer norm, the GELU and the next
convolution in the forward pass, and again in the backward pass, where the convolution also receives a
transposed gradient. On the 2-core machine these copies and the transposed layer-norm/GELU backward
took about as long as the convolutions themselves.

:class:`ConvFeatureExtractor` keeps fairseq's modules and parameter names (``conv_layers.i.0.weight``,
``conv_layers.i.2.1.weight``, ...), so checkpoints are unchanged, and only replaces ``forward``:

* the layer norm over channels and the GELU run in one autograd function directly on the contiguous
  ``(B, C, T)`` conv output (:class:`ChannelLayerNormGELU`): no transposes, and it saves one normalised
  tensor for backward where LayerNorm + GELU saved two;
* the first convolution (one input channel) is a matrix product with the waveform's frames
  (``unfold`` is a view): PyTorch's CPU convolution computes its weight gradient slowly for one input
  channel, while the matrix product's is a plain GEMM.

Same arithmetic up to float rounding (tests/audio/test_conv_features.py compares outputs and gradients
with fairseq's forward).
"""

import ast
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel


class ChannelLayerNormGELU(torch.autograd.Function):
    """``gelu(layer_norm over dim 1 of x (B, C, T))`` with per-channel ``weight``/``bias``, in fp32.

    The same as fairseq's ``TransposeLast -> Fp32LayerNorm -> TransposeLast -> GELU`` without the
    transposes. Saves the normalised input and the inverse std; the GELU input is recomputed in
    backward (one fused multiply-add) instead of being stored.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        dtype = x.dtype
        x = x.float()
        # Two-pass mean / variance over channels (as stable as LayerNorm's Welford). Not var_mean: its
        # reduction over a middle dimension is not vectorised on CPU (30x slower than mean here).
        xhat = x - x.mean(1, keepdim=True)
        rstd = xhat.square().mean(1, keepdim=True).add_(eps).rsqrt_()
        xhat.mul_(rstd)
        y = torch.addcmul(bias.float()[:, None], xhat, weight.float()[:, None])
        ctx.save_for_backward(xhat, rstd, weight, bias)
        return F.gelu(y).to(dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xhat, rstd, weight, bias = ctx.saved_tensors
        w = weight.float()[:, None]
        y = torch.addcmul(bias.float()[:, None], xhat, w)
        g = torch.ops.aten.gelu_backward(grad_out.float().contiguous(), y)  # dL/d(layer-norm output)
        del y
        prod = g * xhat
        grad_weight = prod.sum((0, 2)).to(weight.dtype)
        grad_bias = g.sum((0, 2)).to(bias.dtype)
        # dL/dx = rstd * (gh - mean_C(gh) - xhat * mean_C(gh * xhat)) with gh = dL/dxhat = g * weight
        g.mul_(w)
        torch.mul(g, xhat, out=prod)
        mean_gx = prod.mean(1, keepdim=True)
        del prod
        g.sub_(g.mean(1, keepdim=True)).addcmul_(xhat, mean_gx, value=-1.0).mul_(rstd)
        return g.to(grad_out.dtype), grad_weight, grad_bias, None


def parse_conv_layers(spec: str, option: str = "model.conv_feature_layers") -> List[Tuple[int, int, int]]:
    """fairseq's conv layer string, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"``, parsed
    without ``eval``: only lists of ``(dim, kernel, stride)`` integer tuples, ``+`` between lists and
    ``* n`` with an integer. Why not ``eval`` (what fairseq does): the string is part of every checkpoint's
    config, and a checkpoint must not be able to run code when a model is built from it. Anything else
    raises ``ValueError`` naming the option, before anything of it runs.
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"{option}={spec!r}: {why}; expected a list expression of (dim, kernel, stride) "
                          f"integer tuples such as \"[(512, 10, 5)] + [(512, 3, 2)] * 4\" (it is parsed, never "
                          f"evaluated)")

    def integer(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value > 0:
            return node.value
        raise bad(f"{ast.unparse(node)!r} is not a positive integer literal")

    def layers(node: ast.AST) -> List[Tuple[int, int, int]]:
        if isinstance(node, ast.List):
            out = []
            for item in node.elts:
                if not (isinstance(item, ast.Tuple) and len(item.elts) == 3):
                    raise bad(f"{ast.unparse(item)!r} is not a (dim, kernel, stride) tuple")
                out.append(tuple(integer(v) for v in item.elts))
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return layers(node.left) + layers(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            count, listed = (node.left, node.right) if isinstance(node.left, ast.Constant) else (node.right, node.left)
            if integer(count) > 1000:
                raise bad(f"repeat count {count.value} is not plausible")
            return layers(listed) * count.value
        raise bad(f"{ast.unparse(node)!r} is not allowed")

    if not isinstance(spec, str) or len(spec) > 10_000:
        raise bad("not a string of reasonable length")
    try:
        tree = ast.parse(spec, mode="eval")
    except SyntaxError as e:
        raise bad(f"not a Python expression ({e.msg})") from None
    result = layers(tree.body)
    if not result:
        raise bad("no layers")
    return result


class ConvFeatureExtractor(ConvFeatureExtractionModel):
    """fairseq's conv feature encoder (same constructor, modules and output ``(B, C, T)``), faster forward."""

    def __init__(self, conv_layers, dropout: float = 0.0, mode: str = "default", conv_bias: bool = False):
        super().__init__(conv_layers, dropout=dropout, mode=mode, conv_bias=conv_bias)
        self.mode = mode
        self.layer_specs = [tuple(layer) for layer in conv_layers]  # (dim, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Waveforms ``(B, S)`` -> features ``(B, C, T)``."""
        for i, (block, (_, kernel, stride)) in enumerate(zip(self.conv_layers, self.layer_specs)):
            conv, dropout = block[0], block[1]
            if i == 0:
                # (C, 1, k) weight times the (B, k, T) frames of the waveform = the strided convolution.
                # bmm, not matmul: matmul would fold the batch into one (B*T, k) x (k, C) product and
                # return a transposed (B, C, T) view, which every following kernel would have to copy.
                frames = x.unfold(-1, kernel, stride).transpose(1, 2)
                weight = conv.weight.view(1, conv.out_channels, kernel).expand(x.size(0), -1, -1)
                x = torch.bmm(weight, frames.to(weight.dtype))
                if conv.bias is not None:
                    x = x + conv.bias[:, None]
            else:
                x = conv(x)
            if dropout.p > 0:
                x = dropout(x)
            if self.mode == "layer_norm":
                norm = block[2][1]  # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
                x = ChannelLayerNormGELU.apply(x, norm.weight, norm.bias, norm.eps)
            else:  # fairseq's "default": group norm after the first conv only, then GELU
                for module in list(block)[2:]:
                    x = module(x)
        return x
