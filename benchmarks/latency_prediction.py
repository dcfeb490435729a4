"""Whole-model CPU latency: predicted from per-layer measurements vs measured.

The `cpu_latency` cost model prices each Linear/Conv2d layer in its form; a
model's predicted latency is the sum over its layers in execution order (the
traced graph). Layers timed alone keep their weights in cache, which a large
model's layers do not: between two calls of a layer, the rest of the model's
weights pass through the caches. The prediction is shown for cache-hot layer
timings and for timings that cycle weight copies as large as the model's own
weights (`working_set_mb` = the model's weight size). Activations, pooling and reshapes between the layers
("rest") are timed once by running the model with every layer replaced by a
replay of its output, and added. Dense and realized models, batch 1 and 32,
one process. A shared machine's speed drifts over minutes, so a prediction
and a measurement taken far apart disagree by the drift: each row takes
``--rounds`` (3) pairs back to back — fresh cost tables, then the model
(fastest of three medians) — and reports the median error and its spread.

    python benchmarks/latency_prediction.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark as tbench

import lcpress
from lcpress import Dense
from lcpress import trace
from lcpress import get_registry
from lcpress.costmodels.cpu_latency import RUN_TIME_CAP

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402


ROUNDS = 3


def measured_ms(model: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    """The fastest of ROUNDS medians: other jobs on a shared machine only ever add time.

    Each median is timed for at least ``min_run_time`` and at most RUN_TIME_CAP times that, as the ``cpu_latency``
    cost model times its layers (without the cap adaptive_autorange keeps timing a noisy measurement for up to 10 s).
    """
    timer = tbench.Timer("m(x)", globals={"m": model.eval(), "x": x}, num_threads=torch.get_num_threads())
    with torch.no_grad():
        limits = {"min_run_time": min_run_time, "max_run_time": RUN_TIME_CAP * min_run_time}
        return min(timer.adaptive_autorange(**limits).median for _ in range(ROUNDS)) * 1e3


class Replay(nn.Module):
    """Stands in for a layer: returns its precomputed output, so only the rest of the model is timed."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


def remainder_ms(model: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    """Latency of everything but the Linear/Conv2d layers: activations, pooling, reshapes, dispatch."""
    from lcpress import replace_module

    stubbed = copy.deepcopy(model).eval()
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: outputs.setdefault(n, out.detach()))
             for n, m in stubbed.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        stubbed(x)
    for h in hooks:
        h.remove()
    for name, out in outputs.items():
        replace_module(stubbed, name, Replay(out))
    return measured_ms(stubbed, x, min_run_time)


def vgg_like() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(256 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))


def one_round(model: nn.Module, dense: nn.Module, x: torch.Tensor, priced, min_run_time: float) -> dict[str, float]:
    """Predicted (cache-hot, in the working set) and measured ms, taken back to back with fresh cost tables."""
    cost_cls = get_registry().cost_model("cpu_latency")
    model_mb = sum(form.param_count(spec) for spec, form in priced) * 4 / 2**20
    rest = remainder_ms(dense, x, min_run_time)  # the same for dense and realized: same activations
    out = {}
    with tempfile.TemporaryDirectory(prefix="lcpress-bench-cache-") as cache:
        for key, working_set in (("hot", 0.0), ("cold", model_mb)):
            cost = cost_cls(cost_cls.Options(min_run_time=min_run_time, working_set_mb=working_set, cache_dir=cache))
            out[key] = cost.total(priced) + rest
    out["measured"] = measured_ms(model, x, min_run_time)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="prediction + measurement pairs per row (median kept)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_prediction.md"))
    args = parser.parse_args()
    os.environ.setdefault("LCPRESS_CACHE_DIR", tempfile.mkdtemp(prefix="lcpress-bench-cache-"))
    min_run_time = 0.05 if args.quick else 0.2
    rounds = 1 if args.quick else args.rounds
    from lcpress import digits_cnn

    models = [("digits CNN", digits_cnn, (1, 8, 8)), ("VGG-like 32×32", vgg_like, (3, 32, 32)), ("MLP 1024-2048-2048", mlp, (1024,))]
    if args.quick:
        models = models[:1]
    lines = ["| model | batch | form | measured (ms) | predicted: layers cache-hot + rest (ms) | error "
             "| predicted: layers in the model's working set + rest (ms) | error | spread of the error over rounds |",
             "|---|---|---|---|---|---|---|---|---|"]
    errors: dict[str, list[float]] = {"hot": [], "cold": []}
    for name, make, shape in models:
        for batch in (1, 32):
            torch.manual_seed(0)
            dense = make().eval()
            x = torch.randn(batch, *shape)
            compressed = copy.deepcopy(dense)
            result = lcpress.compress(compressed, {"tasks": [{"layers": ["*"], "target": {"cost": "flops", "ratio": 0.3}}],
                                                   "schedule": {"steps": 0}}, example_input=x, progress=False)
            graph = trace(dense, x)
            forms = {r.name: r for r in result.records}
            names = [t.name for t in result.tasks]
            for label, model, priced in (
                ("dense", dense, [(spec, Dense()) for spec in graph.specs.values()]),
                ("realized (30% FLOPs)", compressed,
                 [(spec, result.tasks[names.index(n)].scheme.form(result.states[names.index(n)])
                   if forms[n].realized else Dense()) for n, spec in graph.specs.items()]),
            ):
                taken = [one_round(model, dense, x, priced, min_run_time) for _ in range(rounds)]
                cells = []
                for key in ("hot", "cold"):
                    ratios = sorted(t[key] / t["measured"] - 1 for t in taken)
                    error = statistics.median(ratios)
                    errors[key].append(abs(error))
                    cells.append(f"{statistics.median(t[key] for t in taken):.3f} | {error:+.0%}")
                spread = f"{ratios[0]:+.0%} … {ratios[-1]:+.0%}"  # of the working-set prediction
                measured = statistics.median(t["measured"] for t in taken)
                lines.append(f"| {name} | {batch} | {label} | {measured:.3f} | {' | '.join(cells)} | {spread} |")
                print(lines[-1], flush=True)
    summary = (f"Largest error (median over {rounds} rounds): cache-hot {max(errors['hot']):.0%}, "
               f"in the model's working set {max(errors['cold']):.0%} (target: within 15%).")
    publish("Whole-model CPU latency: predicted vs measured",
            f"Machine: {describe()}. Command: `python benchmarks/latency_prediction.py`.", lines, args.out, args.quick,
            summary)


if __name__ == "__main__":
    main()
