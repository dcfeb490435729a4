"""The benchmarks' quick modes run, so the scripts do not rot. Nothing here is timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["realized_speedup.py", "cstep_speed.py", "budget_methods.py",
                                    "latency_target.py", "latency_prediction.py", "combinations.py"])
def test_quick_mode_runs(script, tmp_path):
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path / "out.md")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout
