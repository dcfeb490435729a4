"""The benchmarks' quick modes run, so the scripts do not rot. Nothing here is timed."""

from __future__ import annotations

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
         "vs_tensorly.py": ("tltorch", "bash benchmarks/make_peer_env.sh")}


@pytest.mark.parametrize("script", ["realized_speedup.py", "cstep_speed.py", "budget_methods.py",
                                    "latency_target.py", "latency_prediction.py", "combinations.py",
                                    *NEEDS])
def test_quick_mode_runs(script, tmp_path):
    if script in NEEDS:
        module, install = NEEDS[script]
        pytest.importorskip(module, reason=f"{script} needs the peer toolkit {module} ({install})")
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path / "out.md")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout
