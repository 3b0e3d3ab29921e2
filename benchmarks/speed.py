"""Speed and memory of d2v_plugin's data2vec_audio against fairseq's bundled reference, side by side.

Each (implementation, size) runs in its own process (both register ``data2vec_audio``; a fresh process also
gives a clean peak RSS) on the same architecture, the same batch and the same masks: Adam steps of
forward + backward + EMA teacher update. Printed: median s/update after warm-up, peak RSS, achieved
GFLOP/s (FLOPs of one update counted with torch's FlopCounterMode) and its ratio to the fp32 matmul peak
measured in the same run; then the EMA update of the base model's teacher against one fused pass over
the same bytes (the memory-bandwidth floor).

    .venv/bin/python benchmarks/speed.py                 # tiny and base audio, CPU, a few minutes
    .venv/bin/python benchmarks/speed.py --sizes tiny --steps 5
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

REPO = Path(__file__).resolve().parents[1]
SIZES = {
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
COMMON = dict(instance_norm_target_layer=True, mask_prob=0.65, mask_length=10, dropout=0.0,
              attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, ema_decay=0.999,
              ema_end_decay=0.9999, ema_anneal_end_step=1000)


def build(impl: str, size: str):
    cfg_kwargs = {**COMMON, **SIZES[size]["arch"]}
    if impl == "reference":
        from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel
    else:
        import d2v_plugin  # noqa: F401
        from d2v_plugin.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel
    torch.manual_seed(0)
    model = Data2VecAudioModel(Data2VecAudioConfig(**cfg_kwargs))
    model.train()
    if impl == "reference":
        with torch.no_grad():  # the reference's EMA deepcopy needs a weight-norm weight made without autograd
            model.encoder.pos_conv(torch.zeros(1, cfg_kwargs["encoder_embed_dim"], 8))
        model.set_num_updates(0)  # builds its EMA teacher
    return model


def batch(size: str):
    b, n = SIZES[size]["batch"]
    g = torch.Generator().manual_seed(0)
    source = torch.randn(b, n, generator=g)
    frames = n
    for _, k, s in eval("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"):
        frames = (frames - k) // s + 1
    from fairseq.data.data_utils import compute_mask_indices
    import numpy as np
    np.random.seed(0)
    mask = torch.from_numpy(compute_mask_indices((b, frames), None, 0.65, 10, min_masks=1))
    return source, mask


def loss_of(impl, model, source, mask):
    out = model(source, mask_indices=mask)
    if impl == "reference":
        return out["losses"]["regression"]
    from d2v_plugin.criterion import regression_loss
    return regression_loss(out["pred"], out["target"], 0.0, None).sum()


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


def worker(impl: str, size: str, steps: int, warmup: int) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
    model = build(impl, size)
    source, mask = batch(size)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(impl, model, source, mask)
        loss.backward()
        opt.step()
        model.set_num_updates(step + 1)  # the EMA teacher step, as fairseq calls it
        times.append(time.perf_counter() - t0)
    with CountFlops() as counter:
        loss_of(impl, model, source, mask).backward()
    return {"s_per_update": statistics.median(times[warmup:]), "loss": float(loss),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "flops": counter.total}


def matmul_peak_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    t = []
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - t0)
    return 2 * 2048**3 / min(t) / 1e9


def ema_bench() -> dict:
    """EMA update of the base model's teacher (transformer only): ours, fairseq's EMAModule, one fused pass."""
    import copy

    import d2v_plugin  # noqa: F401
    from d2v_plugin.ema_teacher import EmaTeacher
    from fairseq.modules import EMAModule, EMAModuleConfig

    encoder = build("ours", "base").encoder
    n = sum(p.numel() for p in encoder.parameters())

    def median_time(fn, reps=10):
        fn()
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return statistics.median(t)

    ours = EmaTeacher(encoder, 0.999, 0.9999, 1000)
    counter = iter(range(1, 10**6))
    ours_s = median_time(lambda: ours.step(encoder, next(counter)))
    ref = EMAModule(copy.deepcopy(encoder), EMAModuleConfig(ema_decay=0.999, ema_fp32=True))
    ref_s = median_time(lambda: ref.step(encoder))
    flat_t, flat_s = torch.randn(n), torch.randn(n)
    floor_s = median_time(lambda: flat_t.lerp_(flat_s, 0.001))
    return {"params": n, "ours": ours_s, "reference": ref_s, "floor": floor_s}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(SIZES), help="model sizes")
    p.add_argument("--steps", type=int, default=8, help="timed updates per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.warmup)))
        return
    torch.set_num_threads(os.cpu_count())
    peak = matmul_peak_gflops()
    print(f"{time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()} | {os.cpu_count()} threads | "
          f"torch {torch.__version__} | fp32 matmul peak {peak:.0f} GFLOP/s\n")
    print("| model | implementation | s/update | updates/s vs reference | peak RSS GiB | GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        results = {}
        for impl in ("reference", "ours"):
            out = subprocess.run([sys.executable, __file__, "--worker", impl, size, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup)], cwd=REPO, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if out.returncode != 0:
                raise SystemExit(f"{impl} {size} failed:\n{out.stderr[-3000:]}")
            results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        for impl, r in results.items():
            gflops = r["flops"] / r["s_per_update"] / 1e9
            speedup = results["reference"]["s_per_update"] / r["s_per_update"]
            print(f"| audio {size} | {impl} | {r['s_per_update']:.3f} | {speedup:.2f}x | {r['peak_rss_gib']:.2f} | "
                  f"{gflops:.0f} | {100 * gflops / peak:.0f}% |")
    ema = ema_bench()
    print(f"\nEMA teacher update, base transformer ({ema['params'] / 1e6:.0f} M params, fp32): "
          f"ours {1e3 * ema['ours']:.1f} ms ({ema['ours'] / ema['floor']:.2f}x the floor), "
          f"fairseq EMAModule {1e3 * ema['reference']:.1f} ms, one fused pass {1e3 * ema['floor']:.1f} ms")


if __name__ == "__main__":
    main()
