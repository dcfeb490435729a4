"""Do realized models stay fast after ONNX export? onnxruntime CPU latency, dense vs realized.

Two models: the digits CNN (three 3×3 convolutions, two Linear layers) and a
Linear-heavy MLP (1024→4096→4096→1024). Each is compressed by direct
compression to a FLOPs target (the realized structure, not the weights, sets
the latency), exported with ``lcpress.export_onnx``, and timed in
onnxruntime's CPU provider (threads set explicitly) at batch 1 and 64. One
process; medians of single calls. (torch eager latency of realized layers:
realized_speedup.py.)

    python benchmarks/onnx_latency.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import lcpress
from lcpress import digits_cnn
from lcpress import export_onnx

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402


def median_ms(fn: Callable[[], object], min_run_time: float) -> float:
    """Median wall time of one call, over at least 10 calls and ``min_run_time`` seconds."""
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < min_run_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, 4 * width), nn.GELU(),
                         nn.Linear(4 * width, width))


def cases(quick: bool):
    width = 256 if quick else 1024
    return [
        ("digits CNN", digits_cnn, (1, 8, 8), 0.3),
        (f"MLP {width}→{4 * width}→{4 * width}→{width}", lambda: mlp(width), (width,), 0.25),
    ]


def realized_copy(build: Callable[[], nn.Module], shape: tuple[int, ...], ratio: float) -> tuple[nn.Module, nn.Module, float]:
    """(dense, realized, achieved FLOPs ratio) by direct compression at ``ratio`` of the FLOPs."""
    torch.manual_seed(0)
    dense = build().eval()
    realized = build().eval()
    realized.load_state_dict(dense.state_dict())
    config = {"tasks": [{"layers": ["*"], "options": {"rank_multiple": 8}, "target": {"cost": "flops", "ratio": ratio}}],
              "schedule": {"steps": 0}}
    result = lcpress.compress(realized, config, example_input=torch.randn(1, *shape), progress=False)
    return dense, result.model.eval(), result.totals["flops_after"] / result.totals["flops_before"]


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "onnx_latency.md"))
    args = parser.parse_args()
    import onnxruntime as ort

    min_run_time = 0.05 if args.quick else 1.0
    lines = ["| model | FLOPs (realized / dense) | batch | dense (ms) | realized (ms) | speed-up |",
             "|---|---|---|---|---|---|"]
    speedups = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, shape, ratio in cases(args.quick):
            dense, realized, achieved = realized_copy(build, shape, ratio)
            inputs = {batch: torch.randn(batch, *shape) for batch in (1, 64)}
            ort_ms = {}
            for kind, model in (("dense", dense), ("realized", realized)):
                done = export_onnx(model, Path(tmp) / f"{kind}.onnx", torch.randn(1, *shape), overwrite=True)
                assert done.max_abs_error is None or done.max_abs_error < 1e-4, done.max_abs_error
                runner = session(done.path, args.threads)
                for batch, x in inputs.items():
                    feed = {"input": x.numpy()}
                    ort_ms[kind, batch] = median_ms(lambda r=runner, f=feed: r.run(None, f), min_run_time)
                del runner
            for batch in inputs:
                speedup = ort_ms["dense", batch] / ort_ms["realized", batch]
                speedups.append(speedup)
                lines.append(f"| {name} | {achieved:.0%} | {batch} | {ort_ms['dense', batch]:.3f} | "
                             f"{ort_ms['realized', batch]:.3f} | {speedup:.2f}× |")
                print(lines[-1], flush=True)
    publish("Realized models in onnxruntime: CPU latency, dense vs realized",
            f"Machine: {describe()}; onnxruntime {ort.__version__}, {args.threads} intra-op threads. "
            f"Command: `python benchmarks/onnx_latency.py`.",
            lines, args.out, args.quick,
            f"Realized models run {min(speedups):.2f}–{max(speedups):.2f}× faster than dense in onnxruntime.")


if __name__ == "__main__":
    main()
