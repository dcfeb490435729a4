"""Scale: lcpress.compress on models of the size users have — BERT-base and a ResNet-50, one CPU thread.

Two models, built here with random weights (no download): BERT-base
(``transformers``' ``BertForSequenceClassification(BertConfig())``, 110 M
weights; skipped when ``transformers`` is missing) and a ResNet-50 written out
by hand (bottleneck blocks [3, 4, 6, 3], BatchNorm, 64×64 inputs, 26 M
weights). Every Linear/Conv layer (BERT: the encoder's, the pooler's and the
classifier's) is ``low_rank`` under ``target: {cost: flops, ratio: 0.5}``, with
a run directory (checkpoints after every LC step, as by default). Each model
runs three cases, each in a fresh process so that peaks do not mix:

* **training alone**: the ``train_fn`` below called twice without lcpress —
  the memory and time of the user's own two L steps;
* **direct compression**: ``schedule.steps: 0``;
* **2 LC steps**: ``schedule.steps: 2``, each L step one plain SGD step per
  batch over a few small batches, with lcpress's penalty added to the loss.

For each: the wall time of ``lcpress.compress``, split with the run's history
(its ``seconds`` column: the direct compression, and each LC step's L step
plus C step) and the time spent inside ``train_fn``; the growth of the peak
resident memory (``ru_maxrss``) during the call, in MiB and in units of the
model's fp32 weights; ``lcpress.save`` and ``lcpress.load`` of the result and
the file's size. A model that loads back with different outputs stops the
script.

    python benchmarks/scale.py            # full size: a few minutes on one core
    python benchmarks/scale.py --quick    # 2-layer BERT, one block per stage: seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402

MODELS = ("BERT-base", "ResNet-50")
CASES = {"train": "training alone", "direct": "direct compression", "lc2": "2 LC steps"}
TRAIN_BATCHES, CALIBRATION_BATCHES = 3, 2
MIB = 2**20


# ---------------------------------------------------------------- the models


class Bottleneck(nn.Module):
    """ResNet's bottleneck block: 1×1 → 3×3 (stride) → 1×1 ×4, with a projected shortcut when the shape changes."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """torchvision's ResNet-50 layout (stem, four stages of bottlenecks, 1000-way head); ``width`` scales it."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            w = width * 2**i
            stages.append(nn.Sequential(*(Bottleneck(cin if b == 0 else 4 * w, w, 2 if i and b == 0 else 1)
                                          for b in range(n))))
            cin = 4 * w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


@dataclass
class Workload:
    build: Callable[[], nn.Module]  # the model with its seeded random weights (called again for lcpress.load)
    layers: list[str]  # the task's layer patterns
    draw: Callable[[int, int], list]  # (batches, seed) -> [(inputs, labels)]
    about: str  # model, weights and batches, for the table's preamble


def bert(quick: bool) -> Workload:
    from transformers import BertConfig, BertForSequenceClassification

    size = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512,
                vocab_size=1000) if quick else {}
    config = BertConfig(num_labels=2, **size)  # default: BERT-base (12 layers, 768 wide, 3072 FFN, 30522 tokens)
    batch, tokens = (2, 16) if quick else (4, 64)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return BertForSequenceClassification(config)

    def draw(n: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            ids = torch.randint(0, config.vocab_size, (batch, tokens), generator=g)
            out.append(({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                        torch.randint(0, 2, (batch,), generator=g)))
        return out

    return Workload(build, ["bert.encoder.*", "bert.pooler.dense", "classifier"], draw,
                    f"{config.num_hidden_layers} layers, {config.hidden_size} wide; batches of {batch}×{tokens} tokens")


def resnet(quick: bool) -> Workload:
    blocks, width, side, batch = ((1, 1, 1, 1), 16, 32, 4) if quick else ((3, 4, 6, 3), 64, 64, 8)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return ResNet(blocks, width)

    def draw(n: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(batch, 3, side, side, generator=g), torch.randint(0, 1000, (batch,), generator=g))
                for _ in range(n)]

    return Workload(build, ["*"], draw, f"blocks {list(blocks)}, width {width}; batches of {batch}×3×{side}×{side}")


def workload(name: str, quick: bool) -> Workload:
    return bert(quick) if name == "BERT-base" else resnet(quick)


def logits(model: nn.Module, x: Any) -> torch.Tensor:
    out = model(**x) if isinstance(x, dict) else model(x)
    return getattr(out, "logits", out)


# ---------------------------------------------------------------- one case, in its own process


def peak_rss() -> int:
    """The process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(name: str, case: str, quick: bool) -> dict[str, Any]:
    """Build the model and its batches, then time one case; the peak RSS growth is measured from here on."""
    import lcpress

    torch.set_num_threads(1)
    work = workload(name, quick)
    model = work.build()
    train, calibration, held_out = work.draw(TRAIN_BATCHES, 1), work.draw(CALIBRATION_BATCHES, 2), work.draw(1, 3)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    inside_train_fn = [0.0]

    def train_fn(model: nn.Module, penalty: Callable[[], torch.Tensor] | None, step: Any) -> float:
        """One plain SGD step per batch, lcpress's penalty added to the loss."""
        start = time.perf_counter()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        for x, y in train:
            loss = F.cross_entropy(logits(model, x), y)
            optimizer.zero_grad(set_to_none=True)
            (loss + penalty() if penalty is not None else loss).backward()
            optimizer.step()
        inside_train_fn[0] += time.perf_counter() - start
        return float(loss)

    def eval_fn(model: nn.Module) -> float:
        x, y = held_out[0]
        with torch.no_grad():
            return float((logits(model, x).argmax(-1) == y).float().mean())

    row: dict[str, Any] = {"model": name, "case": CASES[case], "weights": sum(p.numel() for p in model.parameters()),
                           "weights_mib": weight_bytes / MIB}
    base = peak_rss()
    if case == "train":
        start = time.perf_counter()
        for k in range(2):
            train_fn(model, None, k)
        row["l_steps_s"] = time.perf_counter() - start
        row["peak_growth_mib"] = (peak_rss() - base) / MIB
        return row

    config = {"tasks": [{"layers": work.layers, "scheme": "low_rank", "target": {"cost": "flops", "ratio": 0.5}}],
              "schedule": {"steps": 0 if case == "direct" else 2}}
    example = {k: v[:1] for k, v in train[0][0].items()} if isinstance(train[0][0], dict) else train[0][0][:1]
    with tempfile.TemporaryDirectory() as tmp:
        config["output_dir"] = str(Path(tmp) / "run")
        start, cpu = time.perf_counter(), time.process_time()
        result = lcpress.compress(model, config, train_fn, eval_fn, example_input=example, calibration=calibration,
                                  progress=False)
        row["compress_s"] = time.perf_counter() - start
        row["compress_cpu_s"] = time.process_time() - cpu  # near the wall time when no other job took the core
        row["peak_growth_mib"] = (peak_rss() - base) / MIB
        seconds = result.history["seconds"].tolist()
        row["dc_step_s"] = seconds[0]
        if case == "lc2":  # each LC step's seconds: its L step and its C step
            row["l_steps_s"] = inside_train_fn[0]
            row["c_steps_s"] = sum(seconds[1:]) - inside_train_fn[0]
        row["other_s"] = row["compress_s"] - sum(seconds)
        row["flops_ratio"] = result.totals["flops_after"] / result.totals["flops_before"]
        row["layers"] = len(result.records)
        row["realized"] = sum(r.realized for r in result.records)

        path = Path(tmp) / "model.safetensors"
        start = time.perf_counter()
        lcpress.save(result.model, path)
        row["save_s"] = time.perf_counter() - start
        row["file_mib"] = path.stat().st_size / MIB
        fresh = work.build()
        start = time.perf_counter()
        loaded = lcpress.load(path, model=fresh)
        row["load_s"] = time.perf_counter() - start
        x = held_out[0][0]
        with torch.no_grad():
            row["load_max_diff"] = float((logits(loaded.eval(), x) - logits(result.model.eval(), x)).abs().max())
    return row


# ---------------------------------------------------------------- the table


def in_subprocess(name: str, case: str, quick: bool) -> dict[str, Any]:
    """``run_case`` in a fresh Python process with one OpenMP thread; its result is the last line of its stdout."""
    command = [sys.executable, __file__, "--case", name, case, *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{name}, {CASES[case]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(row: dict[str, Any], key: str, fmt: str = ".1f") -> str:
    return format(row[key], fmt) if key in row else "–"


def table(rows: list[dict[str, Any]], skipped: dict[str, str]) -> list[str]:
    lines = ["| model | case | compress (s) | DC step (s) | L steps (s) | C steps (s) | other (s) | peak RSS growth "
             "(MiB) | × weights | save (s) | load (s) | file (MiB) | FLOPs | realized |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        realized = f"{r['realized']}/{r['layers']}" if "layers" in r else "–"
        lines.append(f"| {r['model']} | {r['case']} | {cell(r, 'compress_s')} | {cell(r, 'dc_step_s')} | "
                     f"{cell(r, 'l_steps_s')} | {cell(r, 'c_steps_s')} | {cell(r, 'other_s')} | "
                     f"{r['peak_growth_mib']:.0f} | {r['peak_growth_mib'] / r['weights_mib']:.1f}× | "
                     f"{cell(r, 'save_s', '.2f')} | {cell(r, 'load_s', '.2f')} | {cell(r, 'file_mib', '.0f')} | "
                     f"{cell(r, 'flops_ratio', '.1%')} | {realized} |")
    for name, reason in skipped.items():
        lines.append(f"| {name} | skipped: {reason} |" + " |" * 12)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny versions of both models")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.md"))
    parser.add_argument("--case", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)  # one case, internal
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, args.quick)))
        return

    torch.set_num_threads(1)  # as every case runs: the machine line says so
    load_before, start = os.getloadavg()[0], time.perf_counter()
    skipped = {} if importlib.util.find_spec("transformers") else \
        {"BERT-base": "transformers is not installed (pip install transformers)"}
    for name, reason in skipped.items():
        print(f"{name} skipped: {reason}")
    rows = []
    for name in MODELS:
        if name in skipped:
            continue
        for case in CASES:
            rows.append(in_subprocess(name, case, args.quick))
            print(f"{name}, {CASES[case]}: done", flush=True)
    bad = [r for r in rows if r.get("load_max_diff", 0.0) > 1e-5]

    shares = [r["compress_cpu_s"] / r["compress_s"] for r in rows if "compress_s" in r]
    busy = f"{min(shares):.0%}–{max(shares):.0%}" if shares else "–"
    sizes = {r["model"]: r for r in rows}
    about = "; ".join(f"{name}: {r['weights'] / 1e6:.1f} M weights ({r['weights_mib']:.0f} MiB fp32), "
                      f"{workload(name, args.quick).about}" for name, r in sizes.items())
    preamble = (
        f"Machine: {describe()}; every case in its own process with `OMP_NUM_THREADS=1`; load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores, shared with other jobs); "
        f"{time.perf_counter() - start:.0f} s in all. Command: `OMP_NUM_THREADS=1 python benchmarks/scale.py"
        f"{' --quick' if args.quick else ''}`.\n\n"
        f"Models (random weights): {about}. Every Linear/Conv layer `low_rank`, `target: {{cost: flops, ratio: 0.5}}`, "
        f"a run directory with a checkpoint after every LC step; L step = {TRAIN_BATCHES} batches, one SGD step each; "
        f"{CALIBRATION_BATCHES} calibration batches; eval_fn on one batch.\n\n"
        "Columns: *compress* is the wall time of `lcpress.compress`; *DC step* the direct compression (the history's "
        "`seconds` at step 0); *L steps* the time inside `train_fn`; *C steps* the LC steps' `seconds` less their L "
        "steps; *other* the rest of the call (planning, evaluation, distance, checkpoints, realization and the run "
        "directory's model file). *Peak RSS growth*: `ru_maxrss` at the end of the call less at its start (model and "
        "batches already built); *× weights* in units of the model's fp32 weights. *save*/*load*: `lcpress.save` of "
        "the result and `lcpress.load` into a freshly built model; every loaded model gives the saved model's "
        f"outputs (largest difference {max((r.get('load_max_diff', 0.0) for r in rows), default=0.0):.1e}). "
        f"The process's CPU time during `lcpress.compress` was {busy} of its wall time.")
    publish("Scale: lcpress.compress on BERT-base and a ResNet-50, one thread", preamble, table(rows, skipped),
            args.out, args.quick)
    if not args.quick:
        with open(Path(args.out).with_suffix(".csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    if bad:
        raise SystemExit("a loaded model's outputs differ from the saved one's: "
                         + ", ".join(f"{r['model']} {r['case']}" for r in bad))


if __name__ == "__main__":
    main()
