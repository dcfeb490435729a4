"""Realized inference speed: dense vs lcpress-realized vs tensorly-torch factorized layers.

At the same rank, on the CPU, batch 1 and 64, in one process. lcpress's
layers are built by the low-rank scheme's own ``realize`` (two thin
Linear/Conv2d layers); tensorly-torch's by ``FactorizedLinear.from_linear`` /
``FactorizedConv.from_conv`` with a CP factorization, in both its ``reconstructed``
(rebuild the dense weight, then one matmul) and ``factorized`` (contract the
factors with the input) implementations (for a matrix, CP of rank r is a rank-r factorization; for a
4-way conv kernel it is a different, CP-of-kernel decomposition — listed for
what a user of that library would get at that rank).

    python benchmarks/vs_tensorly.py [--quick]      # needs tensorly-torch (benchmark environment)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark as tbench

from lcpress import LowRank
from lcpress.linalg import spectrum
from lcpress import get_registry
from lcpress import State
from lcpress.linalg import to_matrix

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402


def lcpress_realized(layer: nn.Module, rank: int) -> nn.Module:
    scheme = get_registry().scheme("low_rank")()
    a, b = spectrum(to_matrix(layer.weight.detach())).factors(rank)
    meta = {"form": "low_rank", "rank": rank, "shape": "channel", "weight_shape": list(layer.weight.shape)}
    assert scheme.form(State({"a": a, "b": b}, meta)) == LowRank(rank)
    return scheme.realize(State({"a": a, "b": b}, meta), layer)


def tensorly_factorized(layer: nn.Module, rank: int, implementation: str) -> nn.Module:
    import tltorch

    if isinstance(layer, nn.Linear):
        return tltorch.FactorizedLinear.from_linear(
            layer, rank=rank, auto_tensorize=False, in_tensorized_features=(layer.in_features,),
            out_tensorized_features=(layer.out_features,), factorization="CP", implementation=implementation)
    return tltorch.FactorizedConv.from_conv(layer, rank=rank, factorization="CP", implementation=implementation)


def median_ms(module: nn.Module, x: torch.Tensor) -> float:
    timer = tbench.Timer("m(x)", globals={"m": module.eval(), "x": x}, num_threads=torch.get_num_threads())
    with torch.no_grad():
        return timer.blocked_autorange(min_run_time=0.2).median * 1e3


def cases(quick: bool) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    if quick:
        return [("Linear 256→256", nn.Linear(256, 256), (256,), 32)]
    return [
        ("Linear 1024→1024", nn.Linear(1024, 1024), (1024,), 64),
        ("Linear 1024→1024", nn.Linear(1024, 1024), (1024,), 256),
        ("Linear 1024→4096", nn.Linear(1024, 4096), (1024,), 128),
        ("Conv 3×3 256→256 @14×14", nn.Conv2d(256, 256, 3, padding=1), (256, 14, 14), 64),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_tensorly.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = ["| layer | rank | batch | dense (ms) | lcpress realized (ms) | tensorly-torch CP, reconstructed (ms) "
             "| tensorly-torch CP, factorized (ms) | lcpress speed-up | best tensorly speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, layer, shape, rank in cases(args.quick):
        ours = lcpress_realized(layer, rank)
        theirs = {impl: tensorly_factorized(layer, rank, impl) for impl in ("reconstructed", "factorized")}
        for batch in (1, 64):
            x = torch.randn(batch, *shape)
            d, o = median_ms(layer, x), median_ms(ours, x)
            t = {}
            for impl, module in theirs.items():
                try:
                    t[impl] = median_ms(module, x)
                except RuntimeError as exc:  # its factorized conv contraction can exhaust memory
                    t[impl] = None
                    print(f"tensorly-torch {impl} failed on {name}: {str(exc)[:80]}", flush=True)
            best = min(v for v in t.values() if v is not None)
            cells = " | ".join("failed (out of memory)" if v is None else f"{v:.3f}" for v in t.values())
            lines.append(f"| {name} | {rank} | {batch} | {d:.3f} | {o:.3f} | {cells} | {d / o:.2f}× | {d / best:.2f}× |")
            print(lines[-1], flush=True)
    publish("Realized inference: dense vs lcpress vs tensorly-torch",
            f"Machine: {describe()}. Command: `python benchmarks/vs_tensorly.py`.", lines, args.out, args.quick)


if __name__ == "__main__":
    main()
