"""Which kernel should a realized 1×1 stage run? A whole model, timed with each.

A low-rank conv in the ``input`` or ``channel`` shape has a plain 1×1 stage.
lcpress realizes it as :class:`lcpress.nn.PointwiseConv2d`, which runs torch's
own 1×1 convolution for batches of at most ``CONV_UP_TO`` images and a batched
matrix product (``baddbmm`` over ``(N, r, H·W)``) for larger ones. This script
times the residual CNN of the equal-latency benchmark with its seven convs
factorized (AIMET weight SVD's 30% ranks, ``input`` shape), three ways, in
turns in one process (`common.interleaved_latency_ms`):

- **default**: ``PointwiseConv2d`` as it is;
- **always GEMM**: every 1×1 stage takes the batched product;
- **always conv**: every 1×1 stage takes ``F.conv2d``.

Weights are random (timing does not depend on them). One torch thread, timed
by its CPU clock (the machine is shared).

    python benchmarks/pointwise_kernel.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import torch
from torch import nn

import lcpress
from lcpress.nn import PointwiseConv2d

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, interleaved_latency_ms, latency_note, publish  # noqa: E402
from mnist_cnns import MODELS  # noqa: E402

RANKS = [9, 10, 14, 14, 14, 14, 7]  # AIMET weight SVD's ranks for the residual CNN at 30% (BENCHMARKS.md)
BATCHES = (1, 2, 4, 8, 32)


class AlwaysGemm(PointwiseConv2d):
    """The batched product at every batch size (what PointwiseConv2d did before it chose by batch)."""

    CONV_UP_TO = 0


class AlwaysConv(PointwiseConv2d):
    """torch's own 1×1 convolution at every batch size."""

    CONV_UP_TO = sys.maxsize


def factorized() -> nn.Module:
    """The residual CNN with its seven convs at RANKS in the ``input`` shape (1×1 over the input channels first)."""
    factory, layers, _ = MODELS["resnet"]
    torch.manual_seed(0)
    tasks = [{"layers": [name], "options": {"rank": rank, "shape": "input"}} for name, rank in zip(layers, RANKS)]
    result = lcpress.compress(factory().eval(), {"tasks": tasks, "schedule": {"steps": 0}},
                              example_input=torch.randn(1, 1, 28, 28), progress=False)
    return result.model.eval()


def with_kernel(model: nn.Module, cls: type[PointwiseConv2d]) -> nn.Module:
    """A copy of ``model`` whose PointwiseConv2d stages run as ``cls`` (same weights)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is PointwiseConv2d:
            module.__class__ = cls
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batches 1 and 32, 3 rounds")
    parser.add_argument("--rounds", type=int, default=25,
                        help="timing length per batch size: about 20 ms per model per round, at least 4 turns per round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pointwise_kernel.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    base = factorized()
    stages = sum(type(m) is PointwiseConv2d for m in base.modules())
    models = {"default": base, "always GEMM": with_kernel(base, AlwaysGemm), "always conv": with_kernel(base, AlwaysConv)}
    rounds = 3 if args.quick else args.rounds
    lines = ["| batch | default (ms) | always GEMM (ms) | always conv (ms) | GEMM / conv | default / best |",
             "|---|---|---|---|---|---|"]
    for batch in ((1, 32) if args.quick else BATCHES):
        ms = interleaved_latency_ms(models, torch.randn(batch, 1, 28, 28), rounds)
        best = min(ms["always GEMM"], ms["always conv"])
        lines.append(f"| {batch} | {ms['default']:.3f} | {ms['always GEMM']:.3f} | {ms['always conv']:.3f} | "
                     f"{ms['always GEMM'] / ms['always conv']:.2f} | {ms['default'] / best:.2f} |")
        print(lines[-1], flush=True)
    publish("Realized 1×1 stages: torch's conv or a batched GEMM, by batch size",
            f"Machine: {describe()}. {latency_note(rounds)} The residual CNN (MNIST, 28×28 inputs) with its seven "
            f"convs at ranks {RANKS} in the input shape: {stages} PointwiseConv2d stages. PointwiseConv2d.CONV_UP_TO = "
            f"{PointwiseConv2d.CONV_UP_TO}. Command: `python benchmarks/pointwise_kernel.py"
            f"{' --quick' if args.quick else ''}`.", lines, args.out, args.quick)


if __name__ == "__main__":
    main()
