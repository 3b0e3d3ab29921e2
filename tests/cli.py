"""Running the real command-line tools from tests."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "d2v_plugin")


def run(args: Sequence[str], timeout: int = 900, env: Dict[str, str] = None, check: bool = True):
    """Run a command from the repo root; on failure show its output in the assertion."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
                **(env or {})}
    proc = subprocess.run([str(a) for a in args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def module(name: str, *args, **kwargs):
    return run([sys.executable, "-m", name, *args], **kwargs)


def hydra_train(config_dir: str, config_name: str, run_dir: Path, overrides: List[str], user_dir: str = USER_DIR,
                **kwargs):
    """``fairseq-hydra-train`` with the plugin, JSON logs and the run folder under ``run_dir``."""
    return run([BIN / "fairseq-hydra-train", "--config-dir", REPO / config_dir, "--config-name", config_name,
                f"common.user_dir={user_dir}", "common.log_format=json", f"hydra.run.dir={run_dir}",
                *overrides], **kwargs)


def json_logs(output: str, tag: str) -> List[dict]:
    """The JSON records fairseq logged under ``[tag]`` (train_inner, train, valid)."""
    records = []
    for m in re.finditer(r"\[" + re.escape(tag) + r"\]\[INFO\] - (\{.*\})", output):
        records.append({k: _num(v) for k, v in json.loads(m.group(1)).items()})
    return records


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def differing_tensors(checkpoint_a: Path, checkpoint_b: Path) -> List[str]:
    """The model tensors (student and teacher) that differ between two checkpoints with the same keys."""
    import torch

    a = torch.load(checkpoint_a, weights_only=True)["model"]
    b = torch.load(checkpoint_b, weights_only=True)["model"]
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return [k for k in a if not torch.equal(a[k], b[k])]
