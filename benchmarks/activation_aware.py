"""Activation-aware vs weight-space LC at one FLOPs target, with the equal-latency benchmark's μ schedule and a 10× larger one.

The output-space penalty lives in each layer's input metric (scaled to a
largest eigenvalue of 1), so it is weaker than μ suggests in most directions;
this compares how far each schedule takes ‖w − Δ(θ)‖ (in the task's own norm)
and what the compressed model scores. Same model, data, passes and FLOPs
target as ``equal_latency.py``; the validation split decides, the test split
is reported.

    python benchmarks/activation_aware.py [--model resnet|fchead] [--ratio 0.5] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import describe, publish  # noqa: E402

#: (C-step error, μ schedule): the equal-latency benchmark's schedule, and one 10× larger
RUNS = [("output", {"mu0": 0.01, "factor": 2.0}), ("output", {"mu0": 0.1, "factor": 2.5}),
        ("weight", {"mu0": 0.01, "factor": 2.0}), ("weight", {"mu0": 0.1, "factor": 2.5})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["resnet", "fchead"], default="resnet")
    parser.add_argument("--ratio", type=float, default=0.5, help="FLOPs ratio of the compressed layers")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="default: benchmarks/results/activation_aware_<model>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    import equal_latency
    from equal_latency_cases import build

    case = build(args.model, args.quick)
    base = dict(case.schedule)
    lines = ["| C-step error | μ schedule | test accuracy | validation accuracy | ‖w − Δ‖ first → last (task norm) | "
             "wall (s) |", "|---|---|---|---|---|---|"]
    for error, schedule in RUNS:
        case.schedule = {**base, **schedule}
        model, info = equal_latency.lcpress_run(case, "flops", args.ratio, error)
        case.finish(model)
        lines.append(f"| {error} | {schedule['mu0']}·{schedule['factor']}^k | {case.evaluate(model)['accuracy']:.4f} | "
                     f"{case.score(model):.4f} | {info['distance_first']:.3g} → {info['distance_last']:.3g} | "
                     f"{info['seconds']:.0f} |")
        print(lines[-1], flush=True)
    publish(f"Activation-aware vs weight-space LC: {case.name}, {args.ratio:.0%} FLOPs",
            f"Machine: {describe()}. Command: `python benchmarks/activation_aware.py --model {args.model} --ratio "
            f"{args.ratio}`. {case.passes} L steps over the same training chunks (SGD lr {case.train_config.lr} × "
            f"{case.train_config.lr_decay}^k); validation: 2,000 held-out training images; BatchNorm re-estimated.",
            lines, args.out or str(HERE / "results" / f"activation_aware_{args.model}.md"), args.quick)


if __name__ == "__main__":
    main()
