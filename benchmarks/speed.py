"""Speed and memory of d2v_plugin's data2vec models (1.0 and 2.0) against fairseq's bundled references, side by side.

Workloads: audio (tiny and base) against ``fairseq.examples.data2vec.models.data2vec_audio``, text (tiny)
against ``...data2vec_text`` and image (tiny) against ``...data2vec_vision``, each pair with the same
architecture, the same batch and the same masks (made once here and handed to both). Each
(implementation, workload) runs in its own process (both sides register the same model names; a fresh
process also gives a clean peak RSS): Adam steps of forward + backward + EMA teacher update. Printed:
median s/update after warm-up, peak RSS (and peak device memory on a GPU), achieved GFLOP/s (FLOPs of
one update counted with torch's per-op formulas) and its ratio to the matmul peak measured in the same
run; then the EMA update of the base audio teacher against one fused pass over the same bytes (the
memory-bandwidth floor). On a GPU (``--device cuda``, the default when one is present) both sides run
under bf16 autocast.

data2vec 2.0 (``--modes v2``, on by default): our ``data2vec_version=2`` models against fairseq's
``data2vec_multi`` (``examples/data2vec/models/data2vec2.py``), same block sizes as the 1.0 rows (embedding
dim, blocks, heads, FFN; image: 1 prenet + 3 blocks), the paper's 2.0 settings otherwise (clone_batch 8 for
audio and text, 16 for images; decoder layers, kernel, groups and projection, its width in the paper's ratio
to the embedding dim), the same batch as the 1.0 row, one precomputed (B*clone_batch, T) mask with the same
count in every row given to both, every dropout and layerdrop at 0. Ours gets the reference's initial weights
(its state dict, converted as a data2vec_multi checkpoint is) and both draw the decoder's noise after the same
seed, so the first update's losses must agree: the run checks it. "masked tokens/s" (frames, tokens or
patches whose targets are regressed, per second) compares the modes: a 2.0 update regresses clone_batch masks
per sample.

The references are built and run (in their worker processes only) by ``tests/reference/runner.py`` and
``tests/reference/runner_v2.py``, which hold every workaround they need on this stack, their mask samplers
replaced by the shared masks included.

    .venv/bin/python benchmarks/speed.py                      # audio tiny+base, text, image, v1+v2: ~6 min
    .venv/bin/python benchmarks/speed.py --modalities audio --sizes base --steps 3
    .venv/bin/python benchmarks/speed.py --modes v2 --sizes tiny --no-ema
    BENCH_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/speed.py    # pin to one core
"""

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.reference.runner: the reference's build and forward, with its workarounds
AUDIO_SIZES = {
    # the tiny CPU recipe (examples/audio/pretraining/tiny_cpu.yaml): ~9 s of audio per batch
    "tiny": dict(arch=dict(conv_feature_layers="[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
                           encoder_layers=4, encoder_embed_dim=128, encoder_ffn_embed_dim=256,
                           encoder_attention_heads=4, conv_pos=16, pos_conv_depth=2, average_top_k_layers=3,
                           extractor_mode="layer_norm"),
                 batch=(6, 24000)),
    # the paper's Base model (examples/audio/pretraining/base_librispeech.yaml): 10 s of audio per batch
    "base": dict(arch=dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                           encoder_attention_heads=12, conv_pos=95, pos_conv_depth=5, average_top_k_layers=8,
                           extractor_mode="layer_norm"),
                 batch=(4, 40000)),
}
AUDIO_COMMON = dict(instance_norm_target_layer=True, mask_prob=0.65, mask_length=10, dropout=0.0,
                    attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, ema_decay=0.999,
                    ema_end_decay=0.9999, ema_anneal_end_step=1000)

# examples/text/pretraining/tiny_cpu.yaml (dropout 0 on both sides, as for audio: no random streams to match);
# our loss_positions=mask_token regresses the <mask> positions, the ones the reference uses
TEXT_VOCAB, TEXT_BATCH = 1000, (32, 64)
TEXT = dict(max_positions=64, head_layers=2, average_top_k_layers=3, layer_norm_target_layer=True, loss_beta=4.0,
            loss_scale=1.0, ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=300,
            ema_transformer_layers_only=True,
            transformer=dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layernorm_embedding=True,
                             activation_fn="gelu", no_scale_embedding=True, max_source_positions=64,
                             encoder=dict(embed_dim=128, ffn_embed_dim=512, layers=4, attention_heads=4,
                                          normalize_before=False, learned_pos=True, layerdrop=0.0)))

# examples/image/pretraining/tiny_cpu.yaml; LayerNorm eps 1e-5 on our side (the reference's; ours defaults to BEiT's 1e-6)
IMAGE_BATCH = 32
IMAGE = dict(image_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, drop_path=0.0, layer_scale_init_value=0.1,
             num_mask_patches=38, min_mask_patches_per_block=4, max_mask_patches_per_block=64, average_top_k_layers=2,
             layer_norm_targets=True, loss_beta=2.0, ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=100)

WORKLOADS = ["audio tiny", "audio base", "text tiny", "image tiny"]
IMPLS = {"v1": ("reference", "ours"), "v2": ("reference_v2", "ours_v2")}

# -- data2vec 2.0: fairseq data2vec_multi options (tests/reference/v2_config.py's names), for both sides -----
# Dropouts, drop-path and layerdrop 0 (as the 1.0 rows): the decoder's mask-token noise is the only draw.
V2_NO_DROP = dict(encoder_dropout=0.0, post_mlp_drop=0.0, attention_dropout=0.0, activation_dropout=0.0,
                  dropout_input=0.0, layerdrop=0.0, start_drop_path_rate=0.0, end_drop_path_rate=0.0,
                  layer_norm_first=False, end_of_block_targets=False, max_update=10**5, seed=1)
V2_MODALITY_NO_DROP = dict(prenet_layerdrop=0.0, prenet_dropout=0.0, start_drop_path_rate=0.0,
                           end_drop_path_rate=0.0, mask_dropout=0.0)
V2_NOISE_SEED = 2  # torch's seed before every forward of both sides: the same mask-token noise


def v2_audio(size: str) -> dict:
    """base_audio_only_task.yaml with the 1.0 row's sizes; decoder 4 x kernel 7, 16 groups, dim = embed / 2."""
    arch = AUDIO_SIZES[size]["arch"]
    dim = arch["encoder_embed_dim"]
    spec = arch.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2")
    return dict(V2_NO_DROP, embed_dim=dim, depth=arch["encoder_layers"], num_heads=arch["encoder_attention_heads"],
                mlp_ratio=arch["encoder_ffn_embed_dim"] / dim, clone_batch=8,
                average_top_k_layers=arch["average_top_k_layers"], ema_decay=AUDIO_COMMON["ema_decay"],
                ema_end_decay=AUDIO_COMMON["ema_end_decay"], ema_anneal_end_step=AUDIO_COMMON["ema_anneal_end_step"],
                ema_encoder_only=False, norm_eps=1e-5, loss_beta=0.0, loss_scale=None,
                instance_norm_target_layer=True, layer_norm_target_layer=False, layer_norm_targets=False,
                supported_modality="AUDIO",
                modalities=dict(audio=dict(
                    V2_MODALITY_NO_DROP, feature_encoder_spec=spec, extractor_mode="layer_norm",
                    conv_pos_depth=arch["pos_conv_depth"], conv_pos_width=arch["conv_pos"], conv_pos_groups=16,
                    prenet_depth=0, mask_prob=0.5, mask_length=5, mask_noise_std=0.01, inverse_mask=False,
                    add_masks=False, ema_local_encoder=False, use_alibi_encoder=True, learned_alibi_scale=True,
                    learned_alibi_scale_per_head=True,
                    decoder=dict(input_dropout=0.0, decoder_dim=dim // 2, decoder_groups=16, decoder_kernel=7,
                                 decoder_layers=4))))


def v2_text() -> dict:
    """base_text_only_task.yaml with the 1.0 row's sizes; decoder 5 x kernel 9, dim = embed, 2 projection layers."""
    enc = TEXT["transformer"]["encoder"]
    dim = enc["embed_dim"]
    return dict(V2_NO_DROP, embed_dim=dim, depth=enc["layers"], num_heads=enc["attention_heads"],
                mlp_ratio=enc["ffn_embed_dim"] / dim, clone_batch=8, average_top_k_layers=TEXT["average_top_k_layers"],
                ema_decay=TEXT["ema_decay"], ema_end_decay=TEXT["ema_end_decay"],
                ema_anneal_end_step=TEXT["ema_anneal_end_step"], ema_encoder_only=True, norm_eps=1e-5,
                loss_beta=0.0, loss_scale=1.0, instance_norm_target_layer=True, layer_norm_target_layer=False,
                layer_norm_targets=False, supported_modality="TEXT",
                modalities=dict(text=dict(
                    V2_MODALITY_NO_DROP, dropout=0.0, max_source_positions=TEXT["max_positions"], learned_pos=True,
                    no_scale_embedding=True, layernorm_embedding=True, prenet_depth=0, mask_prob=0.48,
                    mask_length=1, mask_noise_std=0.01,
                    decoder=dict(input_dropout=0.0, decoder_dim=dim, decoder_groups=1, decoder_kernel=9,
                                 decoder_layers=5, decoder_residual=False, projection_layers=2,
                                 projection_ratio=2.0))))


def v2_image() -> dict:
    """base_images_only_task.yaml with the 1.0 row's sizes (4 blocks: 1 prenet + 3, as the paper's 2 + 10);
    decoder 6 x kernel 3, 16 groups, dim = embed."""
    dim = IMAGE["embed_dim"]
    return dict(V2_NO_DROP, embed_dim=dim, depth=IMAGE["depth"] - 1, num_heads=IMAGE["num_heads"], mlp_ratio=4.0,
                clone_batch=16, average_top_k_layers=IMAGE["average_top_k_layers"], ema_decay=IMAGE["ema_decay"],
                ema_end_decay=IMAGE["ema_end_decay"], ema_anneal_end_step=IMAGE["ema_anneal_end_step"],
                ema_encoder_only=False, norm_eps=1e-6, loss_beta=0.0, loss_scale=None,
                instance_norm_target_layer=True, layer_norm_target_layer=False, layer_norm_targets=True,
                cls_loss=0.01, min_target_var=0.0, min_pred_var=0.0, supported_modality="IMAGE",
                modalities=dict(image=dict(
                    V2_MODALITY_NO_DROP, input_size=IMAGE["image_size"], patch_size=IMAGE["patch_size"], in_chans=3,
                    embed_dim=dim, prenet_depth=1, inverse_mask=True, mask_prob=0.8, mask_prob_adjust=0.07,
                    mask_length=3, mask_noise_std=0.01, ema_local_encoder=True, num_extra_tokens=1,
                    init_extra_token_zero=False, use_alibi_encoder=False,
                    decoder=dict(input_dropout=0.0, decoder_dim=dim, decoder_groups=16, decoder_kernel=3,
                                 decoder_layers=6))))


def options_v2(workload: str) -> dict:
    modality, size = workload.split()
    return v2_audio(size) if modality == "audio" else v2_text() if modality == "text" else v2_image()


# -- shared inputs (made once, in the parent) --------------------------------------------------------
def text_dictionary():
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(TEXT_VOCAB):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")  # last, as the masked_lm task adds it
    return d


def make_inputs(workload: str) -> dict:
    """The batch and masks of ``workload``, identical for both implementations."""
    modality, size = workload.split()
    g = torch.Generator().manual_seed(0)
    if modality == "audio":
        import numpy as np
        from fairseq.data.data_utils import compute_mask_indices

        b, n = AUDIO_SIZES[size]["batch"]
        frames = n
        for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:  # both sizes' conv kernels and strides
            frames = (frames - k) // s + 1
        # seed + epoch + indices: fairseq's deterministic mode (without them each row draws from fresh entropy)
        mask = compute_mask_indices((b, frames), None, 0.65, 10, min_masks=1, seed=1, epoch=1,
                                    indices=torch.arange(b))
        return {"source": torch.randn(b, n, generator=g), "mask": torch.from_numpy(np.asarray(mask))}
    if modality == "text":
        d = text_dictionary()
        b, t = TEXT_BATCH
        tokens = torch.randint(d.nspecial, d.nspecial + TEXT_VOCAB, (b, t), generator=g)
        tokens[:, 0], tokens[:, -1] = d.bos(), d.eos()
        # BERT masking as fairseq's masked_lm: 15% selected; of those 80% <mask>, 10% random, 10% unchanged
        selected = torch.rand(b, t, generator=g) < 0.15
        selected[:, 0] = selected[:, -1] = False
        kind = torch.rand(b, t, generator=g)
        src = tokens.clone()
        src[selected & (kind < 0.8)] = d.index("<mask>")
        replace = selected & (kind >= 0.8) & (kind < 0.9)
        src[replace] = torch.randint(d.nspecial, d.nspecial + TEXT_VOCAB, (b, t), generator=g)[replace]
        target = torch.where(selected, tokens, torch.full_like(tokens, d.pad()))
        return {"src": src, "target": target, "tokens": tokens}
    from d2v_plugin.core.masking import block_mask_2d

    grid = IMAGE["image_size"] // IMAGE["patch_size"]
    torch.manual_seed(0)
    mask = block_mask_2d(IMAGE_BATCH, grid, grid, IMAGE["num_mask_patches"],
                         min_block=IMAGE["min_mask_patches_per_block"], max_block=IMAGE["max_mask_patches_per_block"])
    return {"images": torch.randn(IMAGE_BATCH, 3, IMAGE["image_size"], IMAGE["image_size"], generator=g),
            "mask": mask.reshape(IMAGE_BATCH, -1)}


def make_inputs_v2(workload: str, v1_inputs: dict) -> dict:
    """The 1.0 row's batch, unmasked (``source``), and one ``(B*clone_batch, T)`` mask (``mask``, True = masked,
    copies of a sample next to each other) with the same count in every row, identical for both sides."""
    modality = workload.split()[0]
    options = options_v2(workload)
    m = options["clone_batch"]
    ids = dict(seed=1, sample_ids=None)
    if modality == "audio":
        from d2v_plugin.core.masking import span_mask

        source = v1_inputs["source"]
        a = options["modalities"]["audio"]
        rows, frames = source.size(0) * m, v1_inputs["mask"].size(1)
        mask = span_mask(rows, frames, a["mask_prob"], a["mask_length"], min_masks=1, require_same_masks=True, **ids)
    elif modality == "text":
        from d2v_plugin.text.model_v2 import random_token_mask

        source = v1_inputs["tokens"]
        rows = source.size(0) * m
        mask = random_token_mask(rows, source.size(1), options["modalities"]["text"]["mask_prob"], seed=1,
                                 sample_ids=torch.arange(rows))
    else:
        from d2v_plugin.core.masking import inverse_block_mask_2d

        source = v1_inputs["images"]
        i = options["modalities"]["image"]
        grid = i["input_size"] // i["patch_size"]
        mask = inverse_block_mask_2d(source.size(0) * m, grid, grid, i["mask_prob"], i["mask_length"],
                                     mask_prob_adjust=i["mask_prob_adjust"], **ids).flatten(1)
    counts = mask.sum(1)
    assert bool((counts == counts[0]).all()) and 0 < int(counts[0]) < mask.size(1), counts
    return {"source": source, "mask": mask.bool()}


def masked_positions(workload: str, mode: str, inputs: dict) -> int:
    """What one update regresses: masked frames / tokens / patches over the batch (v2: over all its copies)."""
    if mode == "v1" and workload.startswith("text"):
        return int(inputs["target"].ne(text_dictionary().pad()).sum())
    return int(inputs["mask"].sum())


# -- models (in the worker process) ------------------------------------------------------------------
def options_of(workload: str) -> dict:
    """The architecture of ``workload``, in the option names both implementations share."""
    modality, size = workload.split()
    if modality == "audio":
        return {**AUDIO_COMMON, **AUDIO_SIZES[size]["arch"]}
    return TEXT if modality == "text" else IMAGE


def build_v2(impl: str, workload: str, reference_state: str):
    """data2vec 2.0: the reference (``data2vec_multi``), or ours with the reference's initial weights."""
    from types import SimpleNamespace

    modality = workload.split()[0]
    options = options_v2(workload)
    torch.manual_seed(0)
    task = SimpleNamespace(source_dictionary=text_dictionary(), cfg=SimpleNamespace(skip_masking=True))
    if impl == "reference_v2":
        from tests.reference.runner_v2 import import_reference_v2, make_config

        model = import_reference_v2().Model.build_model(make_config(options), task if modality == "text" else None)
        torch.save(model.state_dict(), reference_state)
        return model.train()
    import d2v_plugin  # noqa: F401

    if modality == "audio":
        from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
        from d2v_plugin.audio.model_v2 import config_from_data2vec_multi

        model = Data2VecAudioModel.build_model(Data2VecAudioConfig(**config_from_data2vec_multi(options)))
    elif modality == "text":
        from omegaconf import OmegaConf

        from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextModel
        from d2v_plugin.text.model_v2 import config_from_data2vec_multi

        cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), config_from_data2vec_multi(options))
        model = Data2VecTextModel.build_model(cfg, task)
    else:
        from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel
        from d2v_plugin.image.model_v2 import config_from_data2vec_multi

        model = Data2VecImageModel.build_model(Data2VecImageConfig(**config_from_data2vec_multi(options)))
    assert getattr(model, "cfg", None) is None or model.cfg.data2vec_version == 2
    model.load_state_dict(torch.load(reference_state, weights_only=True), strict=True)
    return model.train()


def loss_of_v2(impl: str, model, inputs: dict):
    """The summed loss of one update, as fairseq's ``model`` criterion sums the reference's and ours does ours."""
    torch.manual_seed(V2_NOISE_SEED)  # the decoder's mask-token noise, drawn alike on both sides
    if impl == "reference_v2":
        out = model(inputs["source"], precomputed_mask=inputs["mask"])
        return sum(v.sum() for v in out["losses"].values())
    out = model(inputs["source"], mask_indices=inputs["mask"])
    from d2v_plugin.core.criterion import regression_loss

    cfg = model.cfg if hasattr(model, "cfg") and hasattr(model.cfg, "loss_beta") else model.encoder.cfg
    loss = regression_loss(out["pred"], out["target"], cfg.loss_beta, cfg.loss_scale).sum()
    return loss + sum(out.get("extra_losses", {}).values())


def build(impl: str, workload: str):
    modality = workload.split()[0]
    options = options_of(workload)
    torch.manual_seed(0)
    if impl == "reference":
        from tests.reference.runner import build_reference

        return build_reference(modality, options, text_dictionary() if modality == "text" else None)
    import d2v_plugin  # noqa: F401

    if modality == "audio":
        from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel

        model = Data2VecAudioModel(Data2VecAudioConfig(**options))
    elif modality == "text":
        from omegaconf import OmegaConf

        from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel

        cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), options, {"loss_positions": "mask_token"})
        model = Data2VecTextModel(cfg, Data2VecTextEncoder(cfg, text_dictionary()))
    else:
        from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel

        model = Data2VecImageModel(Data2VecImageConfig(**options, layer_norm_eps=1e-5))
    model.train()
    return model


def loss_of(impl: str, workload: str, model, inputs: dict):
    modality = workload.split()[0]
    if impl.endswith("_v2"):
        return loss_of_v2(impl, model, inputs)
    if impl == "reference":
        from tests.reference.runner import LOSS, reference_forward

        return reference_forward(modality, model, inputs)["losses"][LOSS[modality]]
    if modality == "audio":
        out = model(inputs["source"], mask_indices=inputs["mask"])
    elif modality == "text":
        out = model(inputs["src"], target_tokens=inputs["target"])
    else:
        out = model(inputs["images"], mask_indices=inputs["mask"])
    from d2v_plugin.core.criterion import regression_loss

    return regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()


class CountFlops(TorchDispatchMode):
    """Sums the FLOPs of matmuls/convolutions/attention with torch's own per-op formulas.

    (torch's FlopCounterMode also tracks modules with autograd hooks, which fails on the no-grad teacher.)
    """

    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        return out


def autocast(device: str):
    """bf16 autocast on a GPU (both implementations), plain fp32 on CPU."""
    if device == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(impl: str, workload: str, device: str, inputs_path: str, steps: int, warmup: int) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
    # Both sides run with the allocator setting our data2vec criterion applies when training on CPU (off with
    # D2V_KEEP_FREED_MEMORY=0):
    # it changes no arithmetic, so the table compares the implementations, not glibc settings.
    # Loaded by path: importing the d2v_plugin package would register our model names in the reference's process.
    spec = importlib.util.spec_from_file_location("cpu_allocator", REPO / "d2v_plugin" / "compat" / "cpu_allocator.py")
    cpu_allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_allocator)
    if device == "cpu":
        cpu_allocator.keep_freed_memory()
    if impl.endswith("_v2"):  # the reference's v2 EMA teacher is made in __init__ (it moves itself to the device)
        model = build_v2(impl, workload, inputs_path + ".reference_state.pt").to(device)
    else:
        model = build(impl, workload).to(device)
    if impl == "reference":
        model.set_num_updates(0)  # builds its EMA teacher, on the model's device
    inputs = {k: v.to(device) for k, v in torch.load(inputs_path, weights_only=True).items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times, losses = [], []
    counter = CountFlops()
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # FLOPs are counted in the first untimed update (counting slows it down), or in an extra pass below
        with counter if step == 0 < warmup else contextlib.nullcontext():
            with autocast(device):
                loss = loss_of(impl, workload, model, inputs)
            loss.backward()
        opt.step()
        model.set_num_updates(step + 1)  # the EMA teacher step, as fairseq calls it
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    if not warmup:
        with counter, autocast(device):
            loss_of(impl, workload, model, inputs).backward()
    return {"s_per_update": statistics.median(times[warmup:]), "loss": loss.item(), "first_loss": losses[0],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_device_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            "flops": counter.total}


def matmul_peak_gflops(device: str) -> float:
    """Best of 10 square matmuls (fp32 on CPU, bf16 on a GPU: the dtype the runs use)."""
    n = 2048 if device == "cpu" else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    t = []
    for _ in range(10):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        t.append(time.perf_counter() - t0)
    return 2 * n**3 / min(t) / 1e9


def ema_bench(device: str) -> dict:
    """EMA update of the base audio teacher (transformer only): ours, fairseq's EMAModule, one fused pass."""
    import copy

    import d2v_plugin  # noqa: F401
    from d2v_plugin.core.ema_teacher import EmaTeacher
    from fairseq.modules import EMAModule, EMAModuleConfig

    encoder = build("ours", "audio base").encoder.to(device)
    n = sum(p.numel() for p in encoder.parameters())

    def median_time(fn, reps=10):
        fn()
        t = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            t.append(time.perf_counter() - t0)
        return statistics.median(t)

    ours = EmaTeacher(encoder, 0.999, 0.9999, 1000)
    counter = iter(range(1, 10**6))
    ours_s = median_time(lambda: ours.step(encoder, next(counter)))
    ref = EMAModule(copy.deepcopy(encoder), EMAModuleConfig(ema_decay=0.999, ema_fp32=True), device=device)
    ref_s = median_time(lambda: ref.step(encoder))
    flat_t, flat_s = torch.randn(n, device=device), torch.randn(n, device=device)
    floor_s = median_time(lambda: flat_t.lerp_(flat_s, 0.001))
    return {"params": n, "ours": ours_s, "reference": ref_s, "floor": floor_s}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modalities", nargs="+", default=["audio", "text", "image"], choices=["audio", "text", "image"])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(AUDIO_SIZES),
                   help="audio model sizes (text and image: tiny)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=8, help="timed updates per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    p.add_argument("--no-ema", action="store_true", help="skip the EMA update comparison")
    p.add_argument("--modes", nargs="+", default=["v1", "v2"], choices=list(IMPLS),
                   help="data2vec 1.0 (against fairseq's data2vec_audio/text/vision) and/or 2.0 (data2vec_multi)")
    p.add_argument("--base-v2-updates", type=int, nargs=2, default=[1, 3], metavar=("WARMUP", "STEPS"),
                   help="audio base v2 (about 3x a v1 base update): untimed and timed updates")
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "WORKLOAD", "INPUTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        impl, workload, inputs_path = args.worker
        print(json.dumps(worker(impl, workload, args.device, inputs_path, args.steps, args.warmup)))
        return
    threads = int(os.environ.get("BENCH_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    peak = matmul_peak_gflops(args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {threads} threads"
    precision = "bf16 autocast" if args.device == "cuda" else "fp32"
    print(f"{time.strftime('%Y-%m-%d')} | {where} | torch {torch.__version__} | {precision} | "
          f"matmul peak {peak:.0f} GFLOP/s\n")
    memory = "peak device GiB" if args.device == "cuda" else "peak RSS GiB"
    print(f"| model | implementation | s/update | updates/s vs reference | masked tokens/s | {memory} | GFLOP/s "
          f"| % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    workloads = [w for w in WORKLOADS if w.split()[0] in args.modalities
                 and (w.split()[0] != "audio" or w.split()[1] in args.sizes)]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
            inputs_path = os.path.join(tmp, workload.replace(" ", "_") + ".pt")
            v1_inputs = make_inputs(workload)
            torch.save(v1_inputs, inputs_path)
            for mode in args.modes:
                path, inputs, (warmup, steps) = inputs_path, v1_inputs, (args.warmup, args.steps)
                if mode == "v2":
                    path = inputs_path.replace(".pt", "_v2.pt")
                    inputs = make_inputs_v2(workload, v1_inputs)
                    torch.save(inputs, path)
                    if workload == "audio base":
                        warmup, steps = args.base_v2_updates
                masked = masked_positions(workload, mode, inputs)
                results = {}
                for impl in IMPLS[mode]:  # the reference first: ours v2 starts from its weights
                    out = subprocess.run([sys.executable, __file__, "--worker", impl, workload, path,
                                          "--device", args.device, "--steps", str(steps), "--warmup",
                                          str(warmup)], cwd=REPO, capture_output=True, text=True,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
                    if out.returncode != 0:
                        raise SystemExit(f"{impl} {workload} failed:\n{out.stderr[-3000:]}")
                    results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
                reference = results[IMPLS[mode][0]]
                for impl, r in results.items():
                    gflops = r["flops"] / r["s_per_update"] / 1e9
                    speedup = reference["s_per_update"] / r["s_per_update"]
                    mem = r["peak_device_gib"] if args.device == "cuda" else r["peak_rss_gib"]
                    print(f"| {workload} | {impl.replace('_', ' ')} | {r['s_per_update']:.3f} | {speedup:.2f}x | "
                          f"{masked / r['s_per_update']:.0f} | {mem:.2f} | {gflops:.0f} | {100 * gflops / peak:.0f}% |",
                          flush=True)
                if mode == "v2":
                    a, b = reference["first_loss"], results["ours_v2"]["first_loss"]
                    rel = abs(a - b) / abs(a)
                    agree = rel <= (1e-4 if args.device == "cpu" else 2e-2)
                    notes.append(f"{workload} v2: clone_batch {options_v2(workload)['clone_batch']}, "
                                 f"{masked} masked per update, first-update loss reference {a:.6g} / ours {b:.6g} "
                                 f"({'agree' if agree else 'DIFFER'}, rel. {rel:.1e})"
                                 + (f"; {warmup} + {steps} updates" if (warmup, steps) != (args.warmup, args.steps)
                                    else ""))
    if notes:
        print("\nv2 rows: updates/s vs reference v2; " + "\n".join(notes))
    if args.device == "cpu" and os.environ.get("D2V_KEEP_FREED_MEMORY", "1") != "0":
        print("\nboth sides: glibc malloc keeps freed memory for reuse (d2v_plugin/compat/cpu_allocator.py); "
              "D2V_KEEP_FREED_MEMORY=0 measures both without it")
    if not args.no_ema:
        ema = ema_bench(args.device)
        print(f"\nEMA teacher update, base audio transformer ({ema['params'] / 1e6:.0f} M params, fp32): "
              f"ours {1e3 * ema['ours']:.1f} ms ({ema['ours'] / ema['floor']:.2f}x the floor), "
              f"fairseq EMAModule {1e3 * ema['reference']:.1f} ms, one fused pass {1e3 * ema['floor']:.1f} ms")


if __name__ == "__main__":
    main()
