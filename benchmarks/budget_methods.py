"""Accuracy at equal FLOPs: uniform truncated SVD vs ALDS vs LC with rank selection.

Three ways to reach the same FLOPs budget, each followed by the same
fine-tuning budget (the same epochs, optimizer and learning-rate decay):

(a) truncated SVD with one uniform rank fraction for every layer, then fine-tuning;
(b) ALDS one-shot (grouped low rank, min–max error allocation), then fine-tuning;
(c) LC with rank selection (the budget met at every C step; the L steps are the fine-tuning).

On the digits CNN of `lcpress demo` and on a small transformer encoder that reads
each 8×8 digit as a sequence of 8 row tokens. One process; prints a table and writes
benchmarks/results/budget_methods.md.

    python benchmarks/budget_methods.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lcpress
from lcpress import TrainConfig
from lcpress import digits_cnn, digits_loaders, train_dense
from lcpress import Dense, LowRank
from lcpress import trace
from lcpress import get_registry
from lcpress import accuracy

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, fine_tune, publish  # noqa: E402


class Block(nn.Module):
    """A pre-norm encoder block that calls its Linear layers (as Hugging Face models do)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


class RowTransformer(nn.Module):
    """A 2-block transformer encoder over the 8 pixel rows of a digit."""

    def __init__(self, width: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.zeros(1, 8, width))
        self.blocks = nn.Sequential(*[Block(width) for _ in range(layers)])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.position
        return self.head(self.blocks(tokens).mean(1))


def trained_models(train, quick: bool) -> tuple[nn.Module, nn.Module]:
    """The digits CNN and the row transformer, each trained from seed 0 (a few epochs in quick mode)."""
    torch.manual_seed(0)
    cnn = digits_cnn()
    train_dense(cnn, train, epochs=3 if quick else 30, progress=False)
    torch.manual_seed(0)
    transformer = RowTransformer()
    train_dense(transformer, train, epochs=2 if quick else 40, lr=0.02, progress=False)
    return cnn, transformer


def flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()



def uniform_svd_tasks(model, x, layers, ratio) -> list[dict]:
    """One rank fraction for every layer: the largest whose FLOPs fit the budget."""
    graph = trace(model, x)
    cost = get_registry().cost_model("flops")()
    budget = ratio * sum(cost.cost(graph.specs[n], Dense()) for n in layers)
    full = {n: min(graph.specs[n].weight_shape[0], int(torch.tensor(graph.specs[n].weight_shape[1:]).prod()))
            for n in layers}
    for frac in [i / 256 for i in range(256, 0, -1)]:
        ranks = {n: max(8, int(frac * full[n]) // 8 * 8) for n in layers}
        if sum(cost.cost(graph.specs[n], LowRank(ranks[n])) for n in layers) <= budget:
            return [{"layers": [n], "options": {"rank": ranks[n]}} for n in layers]
    return [{"layers": [n], "options": {"rank": 8}} for n in layers]


def run(method, dense, layers, x, loaders, ratio, steps, cfg):
    train, test = loaders
    model = copy.deepcopy(dense)
    train.generator.manual_seed(0)
    start = time.perf_counter()
    if method == "LC rank selection":
        config = {"tasks": [{"layers": layers, "target": {"cost": "flops", "ratio": ratio}}],
                  "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": steps}, "train": cfg.to_dict()}
        lcpress.compress(model, config, loaders=loaders, example_input=x, progress=False)
    else:
        tasks = (uniform_svd_tasks(model, x, layers, ratio) if method == "uniform SVD"
                 else [{"layers": layers, "scheme": "alds", "target": {"cost": "flops", "ratio": ratio}}])
        lcpress.compress(model, {"tasks": tasks, "schedule": {"steps": 0}}, example_input=x, progress=False)
        fine_tune(model, train, steps, cfg)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "budget_methods.md"))
    args = parser.parse_args()
    loaders = digits_loaders(64, 0)
    x = torch.randn(1, 1, 8, 8)
    steps, cfg = (1, TrainConfig(epochs=1, lr=0.02, lr_decay=0.95)) if args.quick else (10, TrainConfig(epochs=2, lr=0.02, lr_decay=0.95))
    cnn, transformer = trained_models(loaders[0], args.quick)
    models = [("digits CNN", cnn, ["2", "5", "8"]),
              ("row transformer", transformer, [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)])]
    ratios = [0.5] if args.quick else [0.2, 0.3, 0.5]
    lines = ["| model | FLOPs target (compressed layers) | method | test accuracy | model FLOPs vs dense | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for name, dense, layers in models:
        base = flops(dense, x)
        lines.append(f"| {name} | dense | — | {accuracy(dense, loaders[1]):.4f} | 100% | — |")
        for ratio in ratios:
            for method in ("uniform SVD", "ALDS", "LC rank selection"):
                model, seconds = run(method, dense, layers, x, loaders, ratio, steps, cfg)
                lines.append(f"| {name} | {ratio:.0%} | {method} | {accuracy(model, loaders[1]):.4f} | "
                             f"{flops(model, x) / base:.1%} | {seconds:.1f} |")
                print(lines[-1], flush=True)
    publish("Accuracy at equal FLOPs: uniform SVD vs ALDS vs LC",
            f"Machine: {describe()}. Command: `python benchmarks/budget_methods.py`. Fine-tuning for every method: "
            f"{steps} × {cfg.epochs} epochs, SGD lr {cfg.lr} × {cfg.lr_decay}^k, momentum 0.9 (Nesterov). "
            "The target bounds the FLOPs of the compressed layers (CNN: the three large layers; transformer: the "
            "feed-forward Linear layers); the model FLOPs column counts the whole model.", lines, args.out, args.quick)


if __name__ == "__main__":
    main()
