"""Storage vs accuracy of combined schemes on the digits CNN.

Runs every config of examples/combinations/ (low rank + sparse, quantized +
sparse, two reshaped low-rank parts, pruning followed by quantization) and
single-scheme references on the same trained model, the same data split and
the same LC schedule, in one process. Storage is the `storage` cost model's
bits (codebook indices at ⌈log2 K⌉ bits, sparse positions, codebooks, biases)
over the three compressed layers and over the whole model; accuracy is on the
held-out digits; FLOPs are those the realized model executes.

    python benchmarks/combinations.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import yaml

import lcpress
from lcpress import digits_cnn, digits_loaders, train_dense
from lcpress import accuracy

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "combinations"
LAYERS = ["2", "5", "8"]

#: Single-scheme references at comparable storage.
REFERENCES = {
    "low rank alone (rank 16)": {"scheme": "low_rank", "options": {"rank": 16}},
    "prune alone (keep 5%)": {"scheme": "prune", "options": {"keep_fraction": 0.05}},
    "quantize alone (k = 2)": {"scheme": "quantize", "options": {"k": 2}},
}


def configs() -> dict[str, dict]:
    """name → config: the example files, then the references with the same schedule."""
    found = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        found[path.stem.replace("_", " ")] = yaml.safe_load(path.read_text())
    template = next(iter(found.values()))
    for name, task in REFERENCES.items():
        found[name] = {**template, "tasks": [{"layers": LAYERS, "cost": "storage", **task}]}
    return found


def run(name: str, config: dict, dense: torch.nn.Module, loaders, quick: bool) -> str:
    config = {k: v for k, v in config.items() if k not in ("model", "data", "output_dir")}
    if quick:
        config["schedule"] = {**config["schedule"], "steps": 1}
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=loaders, progress=False)
    seconds = time.perf_counter() - start
    table = result.layers.set_index("layer")
    layer_before = table.loc[LAYERS, "storage_before"].sum()
    layer_after = table.loc[LAYERS, "storage_after"].sum()
    t = result.totals
    acc = accuracy(model, loaders[1])  # the realized model
    return (f"| {name} | {layer_before / layer_after:.1f}× | {t['storage_before'] / t['storage_after']:.1f}× "
            f"| {100 * acc:.2f}% | {t['flops_after'] / t['flops_before']:.0%} | {result.max_abs_error:.1e} "
            f"| {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one LC step per config, 2 training epochs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "combinations.md"))
    parser.add_argument("--only", default="", help="comma-separated substrings of config names to run")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaders = digits_loaders(batch_size=64, seed=0)
    dense = digits_cnn()
    train_dense(dense, loaders[0], epochs=2 if args.quick else 30, progress=False)
    dense_acc = accuracy(dense, loaders[1])
    lines = ["| method | storage of the 3 layers | whole model | accuracy | FLOPs | realized vs Δ(θ) | seconds |",
             "|---|---|---|---|---|---|---|",
             f"| dense | 1.0× | 1.0× | {100 * dense_acc:.2f}% | 100% | — | — |"]
    wanted = [w for w in args.only.split(",") if w]
    for name, config in configs().items():
        if wanted and not any(w in name for w in wanted):
            continue
        lines.append(run(name, config, dense, loaders, args.quick))
        print(lines[-1], flush=True)
    schedule = next(iter(configs().values()))["schedule"]
    preamble = (f"Machine: {describe()}.\n\nDigits CNN trained 30 epochs; layers {', '.join(LAYERS)} compressed "
                f"(96% of its weights). Every method: the same LC schedule ({schedule['steps']} steps, μ0 = "
                f"{schedule['mu0']}, ×{schedule['factor']}, one epoch per L step). Storage ratios are dense bits / "
                f"compressed bits under the `storage` cost model. Command: `python benchmarks/combinations.py`.")
    publish("Combined schemes: storage vs accuracy", preamble, lines, args.out, args.quick)


if __name__ == "__main__":
    main()
