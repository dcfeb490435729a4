"""Compress for the device: 50% of dense CPU latency vs 50% of dense FLOPs.

The same LC run (rank selection, same μ schedule and fine-tuning) with two
targets over the same layers: `cpu_latency` (measured on this CPU, at the
deployment batch size) and `flops`. Reports each realized model's measured
latency against dense and its accuracy. On the digits CNN and the small
row-transformer of benchmarks/budget_methods.py.

    python benchmarks/latency_target.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import torch

import lcpress
from lcpress import digits_cnn, digits_loaders, train_dense
from lcpress import accuracy

sys.path.insert(0, str(Path(__file__).parent))
from budget_methods import RowTransformer  # noqa: E402
from latency_prediction import measured_ms  # noqa: E402
from common import describe, publish  # noqa: E402

BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_target.md"))
    args = parser.parse_args()
    os.environ.setdefault("LCPRESS_CACHE_DIR", tempfile.mkdtemp(prefix="lcpress-bench-cache-"))
    loaders = digits_loaders(64, 0)
    steps, epochs = (1, 1) if args.quick else (8, 2)
    x = torch.randn(BATCH, 1, 8, 8)
    torch.manual_seed(0)
    cnn = digits_cnn()
    train_dense(cnn, loaders[0], epochs=2 if args.quick else 30, progress=False)
    torch.manual_seed(0)
    transformer = RowTransformer()
    train_dense(transformer, loaders[0], epochs=2 if args.quick else 40, lr=0.02, progress=False)
    models = [("digits CNN", cnn, ["2", "5", "8"]),
              ("row transformer", transformer, [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)])]
    lines = ["| model | target | compressed layers' CPU latency vs dense | whole model, measured (b=64) | test accuracy "
             "| model FLOPs vs dense |", "|---|---|---|---|---|---|"]
    min_run_time = 0.05 if args.quick else 0.5
    for name, dense, layers in models:
        dense_ms = measured_ms(dense, x, min_run_time)
        lines.append(f"| {name} | dense ({dense_ms:.3f} ms) | 100% | 100% | {accuracy(dense, loaders[1]):.4f} | 100% |")
        for cost in ("cpu_latency", "flops"):
            model = copy.deepcopy(dense)
            loaders[0].generator.manual_seed(0)
            config = {"tasks": [{"layers": layers, "cost": cost, "target": {"cost": cost, "ratio": 0.5}}],
                      "cost_models": {"cpu_latency": {"batch_size": BATCH, "min_run_time": min_run_time / 5}},
                      "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": steps}, "train": {"epochs": epochs, "lr": 0.02}}
            result = lcpress.compress(model, config, loaders=loaders, example_input=x[:1], progress=False)
            ratio = measured_ms(model, x, min_run_time) / dense_ms
            flops = result.totals["flops_after"] / result.totals["flops_before"]
            rows = result.layers.set_index("layer").loc[layers]
            layer_latency = rows["cpu_latency_after"].sum() / rows["cpu_latency_before"].sum()
            lines.append(f"| {name} | 50% of {cost} | {layer_latency:.0%} | {ratio:.0%} "
                         f"| {accuracy(model, loaders[1]):.4f} | {flops:.0%} |")
            print(lines[-1], flush=True)
    publish("Compressing for latency vs for FLOPs (CPU)",
            f"Machine: {describe()}. Command: `python benchmarks/latency_target.py`. Targets bound the "
            f"compressed layers' cost; latencies are whole-model medians at batch {BATCH}.", lines, args.out, args.quick)


if __name__ == "__main__":
    main()
