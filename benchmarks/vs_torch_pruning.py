"""Structured pruning at equal FLOPs: Torch-Pruning vs lcpress structured pruning vs lcpress low rank.

Same model (trained once), same data split, same fine-tuning budget (L steps ×
epochs, SGD with the same learning-rate decay), same cost measure (FLOPs of the
final model counted by torch's FlopCounterMode), one process:

* **Torch-Pruning** — ``MetaPruner`` with L2 magnitude importance and one
  channel sparsity for every prunable layer; the sparsity is found by
  bisection so that the pruned model's FLOPs meet the budget, then the model
  is fine-tuned with the optimizer and epochs that lcpress's L steps get.
  Torch-Pruning removes a pruned layer's output channels *and* the input
  channels of the layer that reads them.
* **lcpress prune** — LC with ``structured: true`` and a FLOPs target: the C
  step chooses how many rows of each layer to keep; each layer is realized as
  a smaller layer plus ``ScatterChannels``. Only the pruned layer shrinks; the
  next layer still reads every channel (pruned ones carry their bias).
* **lcpress low rank** — LC with rank selection at the same FLOPs target.

Models: the digits CNN of ``lcpress demo`` (budget over all its layers; the
final classifier is not pruned) and the row transformer of
``budget_methods.py`` (budget over its feed-forward Linear layers; only the
feed-forward hidden width is pruned by Torch-Pruning — attention, the
residual width and the head are left alone by every method).

Needs torch-pruning (``pip install --no-deps torch-pruning==1.6.1`` works in
lcpress's own environment, or the ``[bench]`` extra):

    python benchmarks/vs_torch_pruning.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import lcpress
from lcpress import TrainConfig
from lcpress import digits_loaders
from lcpress import accuracy

sys.path.insert(0, str(Path(__file__).parent))
from budget_methods import trained_models  # noqa: E402
from common import (describe, fine_tune, flops, interleaved_latency_ms, latency_note,  # noqa: E402
                    layer_flops, plot_accuracy_vs_flops, publish)

TP, PRUNE, LOW_RANK = "Torch-Pruning magnitude", "lcpress prune (structured)", "lcpress low rank"


@dataclass
class Case:
    name: str
    dense: nn.Module
    budget_layers: list[str]             # the layers whose FLOPs the budget bounds
    prune_layers: list[str]              # the layers lcpress prunes (rows)
    tp_ignored: Callable[[nn.Module], list[nn.Module]]   # what Torch-Pruning must leave alone
    low_rank_options: dict = field(default_factory=dict)


def run_lcpress(case: Case, x, loaders, layers, ratio, options, scheme, steps, cfg):
    """One LC run with a FLOPs target of ``ratio`` over ``layers``; returns the realized model and seconds."""
    task = {"layers": layers, "scheme": scheme, "options": options, "target": {"cost": "flops", "ratio": ratio}}
    config = {"tasks": [task], "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": steps}, "train": cfg.to_dict()}
    model = copy.deepcopy(case.dense)
    loaders[0].generator.manual_seed(0)
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=loaders, example_input=x, progress=False)
    seconds = time.perf_counter() - start
    forms = result.layers.set_index("layer")["form"]
    return result.model, seconds, " / ".join(str(forms[n]) for n in layers)


def tp_pruned(case: Case, x, sparsity: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(case.dense).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the transformer's position parameter: pruned along nothing we prune
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=sparsity, ignored_layers=case.tp_ignored(model))
        pruner.step()
    return model


def run_tp(case: Case, x, loaders, target_flops: float, steps, cfg, bisections: int):
    """Bisection on Torch-Pruning's channel sparsity for the least pruning within ``target_flops``."""
    start = time.perf_counter()
    lo, hi = 0.0, 0.95
    best = tp_pruned(case, x, hi)
    if flops(best, x) > target_flops:
        raise RuntimeError(f"Torch-Pruning cannot reach {target_flops:.0f} FLOPs on {case.name}")
    for _ in range(bisections):
        mid = (lo + hi) / 2
        model = tp_pruned(case, x, mid)
        if flops(model, x) <= target_flops:
            best, hi = model, mid
        else:
            lo = mid
    loaders[0].generator.manual_seed(0)
    fine_tune(best, loaders[0], steps, cfg)
    layers = dict(best.named_modules())
    widths = [layers[n].out_features if isinstance(layers[n], nn.Linear) else layers[n].out_channels
              for n in case.prune_layers]
    return best, time.perf_counter() - start, f"sparsity {hi:.3f}: " + " / ".join(f"{w} out" for w in widths)


def cases(quick: bool, train) -> list[Case]:
    cnn, transformer = trained_models(train, quick)
    ffn = [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)]

    def transformer_ignored(m: nn.Module) -> list[nn.Module]:
        return [m.embed, m.head] + [b.attention for b in m.blocks] + [b.ffn[2] for b in m.blocks]

    return [
        Case("digits CNN", cnn, ["0", "2", "5", "8", "10"], ["0", "2", "5", "8"], lambda m: [m[10]],
             {"shape": "auto"}),
        Case("row transformer", transformer, ffn, ffn, transformer_ignored),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: the machine is shared)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_torch_pruning.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        sys.exit("needs torch-pruning: pip install --no-deps torch-pruning==1.6.1")
    loaders = digits_loaders(64, 0)
    x = torch.randn(1, 1, 8, 8)
    steps, cfg = ((1, TrainConfig(epochs=1, lr=0.02, lr_decay=0.95)) if args.quick
                  else (10, TrainConfig(epochs=2, lr=0.02, lr_decay=0.95)))
    budgets = [0.5] if args.quick else [0.5, 0.3, 0.1]
    bisections, rounds = (5, 3) if args.quick else (12, 15)
    lines = ["| model | FLOPs budget | method | test accuracy | achieved FLOPs | latency b=1 (ms) | "
             "latency b=64 (ms) | wall time (s) | structure |",
             "|---|---|---|---|---|---|---|---|---|"]
    panels = {}
    for case in cases(args.quick, loaders[0]):
        total = flops(case.dense, x)
        budget_flops = layer_flops(case.dense, x, case.budget_layers)
        prune_flops = layer_flops(case.dense, x, case.prune_layers)
        runs = [("dense", "—", case.dense, 0.0, "")]
        for budget in budgets:
            target = total - (1 - budget) * budget_flops   # whole-model FLOPs allowed
            # lcpress's targets bound the FLOPs of a task's own layers; the rest of the model stays as it is
            prune_ratio = (target - (total - prune_flops)) / prune_flops
            for method, go in (
                (TP, lambda: run_tp(case, x, loaders, target, steps, cfg, bisections)),
                (PRUNE, lambda: run_lcpress(case, x, loaders, case.prune_layers, prune_ratio,
                                            {"structured": True}, "prune", steps, cfg)),
                (LOW_RANK, lambda: run_lcpress(case, x, loaders, case.budget_layers, budget,
                                               case.low_rank_options, "low_rank", steps, cfg)),
            ):
                model, seconds, structure = go()
                runs.append((method, f"{budget:.0%}", model, seconds, structure))
                print(f"{case.name} {budget:.0%} {method}: accuracy {accuracy(model, loaders[1]):.4f}, "
                      f"FLOPs {flops(model, x) / total:.1%}, {seconds:.1f} s, {structure}", flush=True)
        models = {str(i): r[2] for i, r in enumerate(runs)}
        lat1 = interleaved_latency_ms(models, torch.randn(1, 1, 8, 8), rounds)
        lat64 = interleaved_latency_ms(models, torch.randn(64, 1, 8, 8), rounds)
        points = []
        for i, (method, budget, model, seconds, structure) in enumerate(runs):
            acc, achieved = accuracy(model, loaders[1]), flops(model, x) / total
            points.append((method, achieved, acc))
            lines.append(f"| {case.name} | {budget} | {method} | {acc:.4f} | {achieved:.1%} | {lat1[str(i)]:.3f} | "
                         f"{lat64[str(i)]:.3f} | {seconds:.1f} | {structure} |")
        panels[case.name] = points
    publish("Structured pruning at equal FLOPs: Torch-Pruning vs lcpress",
            f"Machine: {describe()}. {latency_note(rounds)} Command: "
            f"`python benchmarks/vs_torch_pruning.py`. Fine-tuning budget for every method: {steps} × {cfg.epochs} "
            f"epochs, SGD lr {cfg.lr} × {cfg.lr_decay}^k, momentum 0.9 (Nesterov); lcpress's are its L steps, "
            "Torch-Pruning's follow the pruning. FLOPs budget: of the whole CNN; of the transformer's feed-forward "
            "layers. Achieved FLOPs: the final model, FlopCounterMode, batch 1 (it does not see inside torch's fused "
            f"attention kernel, which no method changes). Wall time: Torch-Pruning = sparsity bisection ({bisections + 1} prunings) "
            "+ fine-tuning; lcpress = the whole LC run. Structure: per layer, in order (CNN: 0 / 2 / 5 / 8, and 10 for low rank; "
            "transformer: blocks.0.ffn.0 / blocks.0.ffn.2 / blocks.1.ffn.0 / blocks.1.ffn.2); Torch-Pruning also "
            "shrinks each next layer's inputs.",
            lines, args.out, args.quick)
    plot_accuracy_vs_flops(panels, args.out, args.quick)


if __name__ == "__main__":
    main()
