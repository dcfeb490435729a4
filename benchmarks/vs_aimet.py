"""Low rank at equal FLOPs: lcpress LC with rank selection vs AIMET's SVD compression.

Same model (trained once), same data split, same fine-tuning budget (L steps ×
epochs, SGD with the same learning-rate decay), same cost measure (FLOPs
counted by torch's FlopCounterMode on the final model), one process. AIMET
runs its greedy per-layer ratio selection (auto mode) at the same target MAC
ratio, then the compressed model is fine-tuned with the same optimizer and
epochs that lcpress's L steps get. Two models:

* the digits CNN of ``lcpress demo``: AIMET weight SVD and spatial SVD vs
  lcpress over all layers (``shape: auto``);
* the row transformer of ``budget_methods.py`` (a 2-block encoder over the 8
  pixel rows of a digit): AIMET weight SVD vs lcpress, both on the
  feed-forward Linear layers (the Linear layers inside torch's fused attention
  stay dense for both; embedding and head too).

AIMET's greedy search tends to land below its target, so lcpress is also run
at exactly the FLOPs AIMET reached.

Needs the benchmark environment (aimet-torch needs torchvision; see
benchmarks/README.md):

    python benchmarks/vs_aimet.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import torch

import lcpress
from lcpress import TrainConfig
from lcpress import digits_loaders
from lcpress import accuracy

sys.path.insert(0, str(Path(__file__).parent))
from budget_methods import trained_models  # noqa: E402
from common import (aimet_svd_compress, describe, fine_tune, flops, interleaved_latency_ms, latency_note,  # noqa: E402
                    layer_flops, plot_accuracy_vs_flops, publish)

INPUT_SHAPE = (1, 1, 8, 8)
FFN = [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)]


def run_lcpress(case, train, test, ratio, steps, cfg):
    """LC rank selection whose whole-model FLOPs target is ``ratio`` (the case's layers carry the budget)."""
    x = torch.zeros(INPUT_SHAPE)
    layer_ratio = (ratio * case["flops"] - (case["flops"] - case["layer_flops"])) / case["layer_flops"]
    config = {
        "tasks": [{"layers": case["layers"], "options": case["options"],
                   "target": {"cost": "flops", "ratio": layer_ratio}}],
        "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": steps},
        "train": cfg.to_dict(),
    }
    model = copy.deepcopy(case["dense"])
    train.generator.manual_seed(0)
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=(train, test), example_input=x, progress=False)
    return result.model, time.perf_counter() - start


def run_aimet(case, train, test, ratio, steps, cfg, scheme: str, candidates: int = 10):
    model = copy.deepcopy(case["dense"]).eval()

    def evaluate(m, iterations, use_cuda=False):  # AIMET scores candidates on training data (no test leakage)
        return accuracy(m, train)

    start = time.perf_counter()
    compressed = aimet_svd_compress(model, evaluate, INPUT_SHAPE, scheme, ratio, candidates,
                                    case["aimet_ignore"](model))
    train.generator.manual_seed(0)
    fine_tune(compressed, train, steps, cfg)
    return compressed, time.perf_counter() - start


def cases(quick: bool, train) -> list[dict]:
    x = torch.zeros(INPUT_SHAPE)
    cnn, transformer = trained_models(train, quick)

    def transformer_ignored(m):  # all but the feed-forward layers: embedding, head, attention projections
        ffn = {id(b.ffn[j]) for b in m.blocks for j in (0, 2)}
        return [layer for layer in m.modules() if isinstance(layer, torch.nn.Linear) and id(layer) not in ffn]

    # the CNN's 1-channel input conv has rank ≤ 9, below lcpress's rank_multiple, so both leave it dense
    out = [{"name": "digits CNN", "dense": cnn, "layers": ["0", "2", "5", "8", "10"], "options": {"shape": "auto"},
            "schemes": ["weight_svd", "spatial_svd"], "aimet_ignore": lambda m: [m[0]]},
           {"name": "row transformer", "dense": transformer, "layers": FFN, "options": {}, "schemes": ["weight_svd"],
            "aimet_ignore": transformer_ignored}]
    for case in out:
        case["flops"] = flops(case["dense"], x)
        case["layer_flops"] = layer_flops(case["dense"], x, case["layers"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: the machine is shared)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_aimet.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    train, test = digits_loaders(64, 0)
    steps, cfg = (1, TrainConfig(epochs=1, lr=0.02, lr_decay=0.95)) if args.quick else (10, TrainConfig(epochs=2, lr=0.02, lr_decay=0.95))
    ratios = [0.5] if args.quick else [0.2, 0.3, 0.5]
    rounds = 3 if args.quick else 15
    x = torch.zeros(INPUT_SHAPE)
    lines = ["| model | method | FLOPs target | test accuracy | achieved FLOPs | latency b=1 (ms) | latency b=64 (ms) "
             "| wall time (s) |", "|---|---|---|---|---|---|---|---|"]
    panels = {}
    for case in cases(args.quick, train):
        runs = [("dense", "—", case["dense"], 0.0)]

        def record(name: str, target: str, model, seconds: float) -> float:
            runs.append((name, target, model, seconds))
            achieved = flops(model, x) / case["flops"]
            print(f"{case['name']:16} {name:28} target {target}: accuracy {accuracy(model, test):.4f}, "
                  f"FLOPs {achieved:.1%}, {seconds:.1f} s", flush=True)
            return achieved

        for ratio in ratios:
            achieved = {"lcpress LC": record("lcpress LC", f"{ratio:.0%}", *run_lcpress(case, train, test, ratio, steps, cfg))}
            for scheme in case["schemes"]:
                label = "AIMET " + scheme.replace("_", " ").replace("svd", "SVD")
                compressed = run_aimet(case, train, test, ratio, steps, cfg, scheme, 3 if args.quick else 10)
                achieved[label] = record(label, f"{ratio:.0%}", *compressed)
            matched = achieved["AIMET weight SVD"]
            if abs(matched - achieved["lcpress LC"]) > 0.02:  # compare at exactly the FLOPs AIMET reached too
                record("lcpress LC at AIMET's FLOPs", f"{matched:.1%}",
                       *run_lcpress(case, train, test, matched, steps, cfg))
        models = {str(i): r[2] for i, r in enumerate(runs)}
        lat1 = interleaved_latency_ms(models, torch.randn(INPUT_SHAPE), rounds)
        lat64 = interleaved_latency_ms(models, torch.randn(64, *INPUT_SHAPE[1:]), rounds)
        points = []
        for i, (name, target, model, seconds) in enumerate(runs):
            acc, achieved_flops = accuracy(model, test), flops(model, x) / case["flops"]
            points.append((name.replace(" at AIMET's FLOPs", ""), achieved_flops, acc))
            lines.append(f"| {case['name']} | {name} | {target} | {acc:.4f} | {achieved_flops:.1%} | "
                         f"{lat1[str(i)]:.3f} | {lat64[str(i)]:.3f} | {seconds:.1f} |")
        panels[case["name"]] = points
    publish("Low rank at equal FLOPs: lcpress vs AIMET",
            f"Machine: {describe()}. {latency_note(rounds)} Command: "
            f"`python benchmarks/vs_aimet.py`. Fine-tuning budget for every method: {steps} × {cfg.epochs} epochs, "
            f"SGD lr {cfg.lr} × {cfg.lr_decay}^k, momentum 0.9 (Nesterov). FLOPs: the whole model, FlopCounterMode, "
            "batch 1 (for the transformer it does not see inside torch's fused attention kernel, which neither "
            "method changes). Wall time: lcpress = the whole LC run; AIMET = greedy selection + fine-tuning.",
            lines, args.out, args.quick)
    plot_accuracy_vs_flops(panels, args.out, args.quick)


if __name__ == "__main__":
    main()
