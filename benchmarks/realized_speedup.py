"""Are realized low-rank layers really faster? Dense vs realized latency on the CPU.

For Linear layers and 3×3 convolutions at several ranks, times the dense
layer and the module the low-rank scheme's ``realize`` builds (the real
product path), at batch 1 and 64, with ``torch.utils.benchmark`` (threads set
explicitly — its default is one), in one process. The measured speed-up is
printed next to the FLOP-count bound ``mn / (r(m+n))`` (for a conv, m = out,
n = in·k·k), with the fraction of the bound reached.

    python benchmarks/realized_speedup.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark as tbench

from lcpress.linalg import spectrum
from lcpress import get_registry
from lcpress import State
from lcpress.costmodels.cpu_latency import RUN_TIME_CAP
from lcpress.linalg import to_matrix

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402


def realized(layer: nn.Module, rank: int) -> nn.Module:
    a, b = spectrum(to_matrix(layer.weight.detach())).factors(rank)
    meta = {"form": "low_rank", "rank": rank, "shape": "channel", "weight_shape": list(layer.weight.shape)}
    return get_registry().scheme("low_rank")().realize(State({"a": a, "b": b}, meta), layer)


def median_s(module: nn.Module, x: torch.Tensor, threads: int, min_run_time: float) -> float:
    """Median seconds per call, timed for at least ``min_run_time`` and at most RUN_TIME_CAP times that (as
    ``cpu_latency``): without the cap, adaptive_autorange keeps timing a noisy measurement for up to 10 s."""
    timer = tbench.Timer("m(x)", globals={"m": module.eval(), "x": x}, num_threads=threads)
    with torch.no_grad():
        return timer.adaptive_autorange(min_run_time=min_run_time,
                                        max_run_time=RUN_TIME_CAP * min_run_time).median


def cases(quick: bool):
    if quick:
        return [("Linear 256→256", nn.Linear(256, 256), (256,), [16])]
    return [
        ("Linear 1024→1024", nn.Linear(1024, 1024), (1024,), [32, 64, 128, 256]),
        ("Linear 1024→4096", nn.Linear(1024, 4096), (1024,), [32, 64, 128, 256]),
        ("Conv 3×3 256→256 @14×14", nn.Conv2d(256, 256, 3, padding=1), (256, 14, 14), [32, 64, 128]),
        ("Conv 3×3 128→128 @28×28", nn.Conv2d(128, 128, 3, padding=1), (128, 28, 28), [16, 32, 64]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "realized_speedup.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    min_run_time = 0.05 if args.quick else 0.5
    header = ("| layer | rank | batch | dense (ms) | realized (ms) | speed-up | FLOP bound | of bound |",
              "|---|---|---|---|---|---|---|---|")
    lines = list(header)
    reached = []
    for name, layer, shape, ranks in cases(args.quick):
        m, n = layer.weight.shape[0], layer.weight[0].numel()
        for rank in ranks:
            fast = realized(layer, rank)
            bound = m * n / (rank * (m + n))
            formats = ["NCHW", "channels_last"] if len(shape) == 3 else [""]
            for batch in (1, 64):
                for fmt in formats:
                    x = torch.randn(batch, *shape)
                    dense_m, fast_m = layer, fast
                    if fmt == "channels_last":  # both models in the layout a conv net deploys with
                        x = x.contiguous(memory_format=torch.channels_last)
                        dense_m = copy.deepcopy(layer).to(memory_format=torch.channels_last)
                        fast_m = copy.deepcopy(fast).to(memory_format=torch.channels_last)
                    dense_t = median_s(dense_m, x, args.threads, min_run_time)
                    real_t = median_s(fast_m, x, args.threads, min_run_time)
                    speedup = dense_t / real_t
                    label = f"{name} {fmt}".strip()
                    lines.append(f"| {label} | {rank} | {batch} | {dense_t * 1e3:.3f} | {real_t * 1e3:.3f} | "
                                 f"{speedup:.2f}× | {bound:.2f}× | {speedup / bound:.0%} |")
                    print(lines[-1], flush=True)
                    if batch == 64 and bound >= 4:
                        reached.append(speedup / bound)
    summary = (f"Where the bound is ≥ 4× at batch 64, realized layers reach {min(reached):.0%}–{max(reached):.0%} "
               f"of it (target: ≥ 80%)." if reached else "")
    publish("Realized low-rank layers: measured speed-up vs the FLOP bound",
            f"Machine: {describe()}; timed with {args.threads} threads. Command: `python benchmarks/realized_speedup.py`.",
            lines, args.out, args.quick, summary)


if __name__ == "__main__":
    main()
