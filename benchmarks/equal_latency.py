"""Accuracy at equal *measured* latency: lcpress with a cpu_latency target against AIMET weight and spatial SVD,
uniform truncated SVD and lcpress with a FLOPs target — on MNIST CNNs (residual blocks; a large fully connected
head) and all-MiniLM-L6-v2 on real news sentences.

For each model and FLOPs budget (30%, 50%, 70% of the compressed layers' FLOPs):

1. the peers compress the same trained model at that budget — uniform truncated SVD (every layer the same FLOPs
   ratio), AIMET 2.42 weight SVD and spatial SVD (greedy per-layer ratios, candidates scored on the *validation*
   split; where AIMET is installed), lcpress LC with a ``flops`` target — and each is trained for the same number
   of passes over the same training chunks (the LC run's L steps are its training);
2. every peer's final model is timed, interleaved in one process, at batch 1 and 32 (1 torch thread, the thread's
   CPU time);
3. for *each* peer, lcpress's ``cpu_latency`` target ratio is chosen so that its direct compression, realized, runs
   at ≤ 97% of that peer's latency at both batch sizes (bisection, each candidate timed interleaved with the peer);
   then the LC run at that ratio — with the weight-space C step and with the activation-aware one
   (``error: output``) — is compared with that peer (the bar tables); with ``--lc-splits 8,4,2`` each lcpress
   weight-space run tries that many L steps, the rest of the passes fine-tuning the realized model, and keeps the
   split whose model scores best on the validation split (as AIMET's greedy search scores its candidates there);
   with ``--allocation sum,minmax`` the latency-matched weight-space run is searched and trained once per
   allocation of the budget among the layers, and the one that scores best on the validation split is kept;
4. all final models are timed again, interleaved, and evaluated on the test split; for the bar, each matched model
   is timed once more with its peer alone (a model's time among many depends on which ran before it).

Same trained model, same splits, same training passes, same optimizer and learning-rate decay for every method;
BatchNorm statistics re-estimated on 2,000 training images for every CNN model before evaluation. Writes
``benchmarks/results/equal_latency_<model>.md`` (+ ``.csv`` and ``.png``).

    python benchmarks/equal_latency.py --model resnet|fchead|minilm [--budgets 0.3,0.5,0.7] [--quick]

AIMET needs the peer environment (``bash benchmarks/make_peer_env.sh``); without it the AIMET rows are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import lcpress
from lcpress import TrainConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (aimet_svd_compress, describe, fine_tune, finetune_section, flops, interleaved_latency_ms,  # noqa: E402
                    latency_note, publish)

BATCHES = (1, 32)
MARGIN = 0.97  # lcpress's direct compression must run at ≤ 97% of the peer's latency before LC trains it
LATENCY, AWARE = "lcpress LC, cpu_latency target", "lcpress LC, cpu_latency target, activation-aware"


@dataclass
class Case:
    """One model of the benchmark and everything every method shares."""

    name: str
    dense: nn.Module
    layers: list[str]  # what every method compresses
    aimet_ignore: list[str]  # every other Linear/Conv2d, named for AIMET
    aimet_schemes: list[str]
    inputs: dict[int, Any]  # timing inputs by batch size
    train: Any  # a loader whose every pass is one training chunk
    validation: Any
    evaluate: Callable[[nn.Module], dict[str, float]]  # test metrics; the first is the one compared
    score: Callable[[nn.Module], float]  # validation metric, for AIMET's greedy search
    train_config: TrainConfig  # the peers' fine-tuning (uniform SVD, AIMET)
    passes: int  # training passes (chunks) every method gets
    schedule: dict[str, Any]
    options: dict[str, Any]
    finish: Callable[[nn.Module], None] = lambda model: None  # e.g. BatchNorm re-estimation
    timing: Callable[[nn.Module], nn.Module] = lambda model: model  # a module called as m(x)
    aimet_input_shape: tuple[int, ...] | None = None
    run_metric: str = "accuracy"  # what lcpress reports on the validation split after every LC step
    latency_batch: tuple[int, ...] = (32,)  # the batch sizes cpu_latency prices layers at (--latency-batch)
    working_set_mb: float | str = 0.0  # cpu_latency's working_set_mb (--working-set-mb; 0: layers timed cache-hot)
    lc_train_config: TrainConfig | None = None  # lcpress's L steps and fine-tuning; None: train_config (--lc-lr)
    weight_only: bool = False  # skip the activation-aware (error: output) latency runs (--no-aware)
    #: L-step counts lcpress's weight-space runs try, the rest of the passes fine-tuning (--lc-splits); the one
    #: with the best validation metric is kept. Empty: the schedule's steps only, no selection.
    lc_splits: tuple[int, ...] = ()
    validate: Callable[[nn.Module], float] | None = None  # the metric lc_splits choose by; None: score
    #: rates lcpress's fine-tuning passes may start at (finetune.lr, --ft-lr); with several, each split that
    #: fine-tunes tries each and the best on validation is kept. Empty: the L steps' rate, decaying on.
    finetune_lrs: tuple[float, ...] = ()
    #: low_rank allocations lcpress's latency-matched weight-space runs try (--allocation sum,minmax): each is
    #: searched to the peer's latency and trained, and the one with the best validation metric is kept.
    #: Empty: the scheme's (or ``options``') allocation only.
    allocations: tuple[str, ...] = ()
    seed: int = 0  # the training data's order (and lcpress's C-step generators), the same for every method
    peers: tuple[str, ...] = ()  # --peers: only these peers (and lcpress matched to them); empty: every peer
    notes: list[str] = field(default_factory=list)

    def example(self) -> Any:
        return self.inputs[1]

    def lc_train(self) -> TrainConfig:
        """What lcpress's runs train with: ``lc_train_config``, or the peers' ``train_config``."""
        return self.lc_train_config or self.train_config


# ------------------------------------------------------------------ methods
def lcpress_best(case: Case, cost: str, ratio: float, error: str = "weight") -> tuple[nn.Module, dict[str, Any]]:
    """lcpress at a ``cost`` target; with ``case.lc_splits`` (or several ``case.finetune_lrs``), the split of the
    passes between L steps and fine-tuning, and the fine-tuning rate, whose model scores best on the *validation*
    split (never the test split), with every candidate's score recorded."""
    if error != "weight" or not (case.lc_splits or len(case.finetune_lrs) > 1):
        return lcpress_run(case, cost, ratio, error, finetune_lr=first_rate(case))
    validate = case.validate or case.score
    tried = []
    for steps, rate in split_candidates(case):  # one --lc-splits entry is one candidate, and its steps are kept
        model, info = lcpress_run(case, cost, ratio, error, steps=steps, finetune_lr=rate)
        case.finish(model)
        info["validation"] = validate(model)
        info["split"] = split_label(case, steps, rate)
        tried.append((info["validation"], -steps, model, info))
    best = max(tried, key=lambda t: t[:2])  # ties: fewer L steps, more fine-tuning; then the first rate listed
    best[3]["seconds"] = sum(t[3]["seconds"] for t in tried)  # the wall time of the whole selection
    best[3]["splits"] = ", ".join(f"{t[3]['split']}: {t[0]:.4f}" for t in tried)
    return best[2], best[3]


def split_candidates(case: Case) -> list[tuple[int, float | None]]:
    """(L steps, first fine-tuning rate) pairs to choose among: every split × every rate where it fine-tunes."""
    splits = case.lc_splits or (case.schedule["steps"],)
    rates = case.finetune_lrs or (None,)
    return [(steps, rate) for steps in splits for rate in (rates if steps < case.passes else (None,))]


def first_rate(case: Case) -> float | None:
    """The fine-tuning rate of a run that chooses none: the first one listed, or the L steps' decaying on."""
    return case.finetune_lrs[0] if case.finetune_lrs else None


def split_label(case: Case, steps: int, rate: float | None) -> str:
    """``4 + 4`` (L steps + fine-tuning passes), with `` from 0.0005`` when several fine-tuning rates are tried."""
    several = len(case.finetune_lrs) > 1 and steps < case.passes
    return f"{steps} + {case.passes - steps}" + (f" from {rate:g}" if several else "")


def layer_ratio_ranks(case: Case, ratio: float) -> dict[str, int]:
    """Uniform truncated SVD: each layer's largest rank whose FLOPs are ≤ ``ratio`` of its own (r(m+n) ≤ ratio·mn)."""
    ranks = {}
    for name in case.layers:
        w = lcpress.get_module(case.dense, name).weight
        m, n = w.shape[0], w[0].numel()
        ranks[name] = max(1, math.floor(ratio * m * n / (m + n)))
    return ranks


def compress(case: Case, config: dict[str, Any], train: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """One lcpress run from the dense model, training with ``train``; the model, and what the run measured."""
    model = copy.deepcopy(case.dense)
    case.train.generator.manual_seed(case.seed)
    config = {"train": train.to_dict(), "seed": case.seed, "metric": case.run_metric, **config}
    start = time.perf_counter()
    result = lcpress.compress(model, config, loaders=(case.train, case.validation), example_input=case.example(),
                              progress=False)
    history = result.history
    info = {"seconds": time.perf_counter() - start, "distance_first": float(history["distance"].iloc[0]),
            "distance_last": float(history["distance"].iloc[-1]), "steps": int(config["schedule"]["steps"])}
    return result.model, info


def uniform_svd(case: Case, ratio: float) -> tuple[nn.Module, dict[str, Any]]:
    tasks = [{"layers": [name], "options": {"rank": rank}} for name, rank in layer_ratio_ranks(case, ratio).items()]
    return compress(case, {"tasks": tasks, "schedule": {"steps": 0}, "finetune": {"steps": case.passes}},
                    case.train_config)


def latency_batches(batches: tuple[int, ...]) -> dict[str, object]:
    """cpu_latency's option for the batch sizes to price at: ``batch_size`` for one, ``batch_sizes`` for several."""
    return {"batch_size": batches[0]} if len(batches) == 1 else {"batch_sizes": list(batches)}


def lcpress_run(case: Case, cost: str, ratio: float, error: str = "weight", steps: int | None = None,
                finetune_lr: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """LC (or, with ``steps=0``, direct compression and fine-tuning) at a ``cost`` target; ``passes`` in all,
    the fine-tuning ones from ``finetune_lr`` (None: the L steps' rate, decaying on)."""
    steps = case.schedule["steps"] if steps is None else steps
    options = {**case.options, "error": error}
    if error == "output":  # the output-space error is measured over input patches: the channel shape's matrix
        options["shape"] = "channel"
    task = {"layers": case.layers, "options": options, "cost": cost, "normalize": True,
            "target": {"cost": cost, "ratio": ratio}}
    config = {"tasks": [task], "schedule": {**case.schedule, "steps": steps},
              "finetune": finetune_section(case.passes - steps, finetune_lr),
              "cost_models": {"cpu_latency": {**latency_batches(case.latency_batch), "threads": 1, "min_run_time": 0.05,
                                              "clock": "thread",  # the shared machine: CPU time, as the final timing
                                              "working_set_mb": case.working_set_mb}}
              if cost == "cpu_latency" else {}}
    return compress(case, config, case.lc_train())


def aimet_svd(case: Case, ratio: float, scheme: str, candidates: int) -> tuple[nn.Module, dict[str, Any]]:
    """AIMET's greedy SVD at the whole-model MAC ratio matching ``ratio`` of the layers, then the same training."""
    model = copy.deepcopy(case.dense).eval()
    total, part = flops(case.timing(case.dense), case.example()), compressed_flops(case)
    start = time.perf_counter()
    compressed = aimet_svd_compress(model, lambda m, iterations, use_cuda=False: case.score(m),
                                    case.aimet_input_shape, scheme, (ratio * part + total - part) / total, candidates,
                                    [lcpress.get_module(model, name) for name in case.aimet_ignore])
    case.train.generator.manual_seed(case.seed)
    fine_tune(compressed, case.train, case.passes, case.train_config)
    return compressed, {"seconds": time.perf_counter() - start}


def compressed_flops(case: Case) -> float:
    """FLOPs of the compressed layers alone at batch 1 (the FLOPs budgets are fractions of these)."""
    graph = lcpress.trace(case.dense, case.example())
    cost = lcpress.get_registry().cost_model("flops")()
    return sum(cost.cost(graph.specs[n], lcpress.Dense()) for n in case.layers)


# ------------------------------------------------------------------ latency
def latencies(case: Case, models: dict[str, nn.Module], rounds: int) -> dict[str, dict[int, float]]:
    """Milliseconds per call of every model at each batch size, interleaved in one session per batch size."""
    timed = {name: case.timing(model) for name, model in models.items()}
    out: dict[str, dict[int, float]] = {name: {} for name in models}
    for batch in BATCHES:
        for name, ms in interleaved_latency_ms(timed, case.inputs[batch], rounds).items():
            out[name][batch] = ms
    return out


def matched_ratio(case: Case, references: dict[int, nn.Module], error: str, rounds: int, steps: int, log,
                  margin: float = MARGIN) -> float:
    """The largest cpu_latency target ratio whose realized direct compression is ≤ MARGIN × each reference.

    Bisection on the log of the ratio; every candidate is timed interleaved with the reference model it must
    beat at that batch size, so the comparison is a ratio measured in one session.
    """
    def fits(ratio: float) -> bool:
        model, _ = _direct(case, ratio, error)
        for batch, reference in references.items():
            ms = _interleaved(case, model, reference, batch, rounds)
            if ms["candidate"] > margin * ms["reference"]:
                log(f"  ratio {ratio:.3f}: {ms['candidate']:.3f} ms > {margin} × {ms['reference']:.3f} ms at b={batch}")
                return False
        log(f"  ratio {ratio:.3f} fits")
        return True

    low, high = math.log(0.02), math.log(1.0)
    if not fits(math.exp(low)):
        return math.exp(low)
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(math.exp(mid)) else (low, mid)
    return math.exp(low)


def paired_latencies(case: Case, model: nn.Module, peer: nn.Module, rounds: int) -> dict[str, float]:
    """A matched model and its peer timed alone together, one session per batch size (the bar's latencies).

    The table's latency columns time every model of a budget in one session. For models whose weights outgrow
    the caches (the large-head CNN's 10 MB) a model's time there depends on which models ran before it, by
    more than the few percent the bar decides on; two models taking turns have the same history.
    """
    out: dict[str, float] = {}
    for batch in BATCHES:
        ms = _interleaved(case, model, peer, batch, rounds)
        out.update({f"pair_ms_b{batch}": ms["candidate"], f"pair_peer_ms_b{batch}": ms["reference"]})
    return out


def _interleaved(case: Case, model: nn.Module, reference: nn.Module, batch: int, rounds: int) -> dict[str, float]:
    """Milliseconds per call of ``model`` ("candidate") and ``reference``, timed interleaved at ``batch``."""
    timed = {"candidate": case.timing(model), "reference": case.timing(reference)}
    return interleaved_latency_ms(timed, case.inputs[batch], rounds)


def matched_run(case: Case, reference: nn.Module, target: float, error: str, rounds: int, margin: float, log,
                tries: int = 1) -> tuple[nn.Module, dict[str, Any]]:
    """lcpress at the searched ``target``, its *trained* model timed against ``reference`` at every batch size.

    The search times untrained direct compressions; LC's last C step chooses ranks from trained weights and may
    land a little slower, or leave time unused. So the trained model is timed too, and while it is slower than
    the peer at either batch size, or faster than ``margin`` of it, the target moves by the ratio measured
    (aiming at the middle of [margin, 1]) and the run is redone — once a target on each side is known, the
    next is their midpoint — at most ``tries`` runs in all. The run kept is the loosest target whose trained
    model was no slower than the peer (the last one when none was). Latency only, never accuracy, steers it;
    every try is recorded and its wall time counts.
    """
    aim = (1.0 + margin) / 2
    fast: tuple[float, nn.Module, dict[str, Any]] | None = None  # the loosest target that was no slower
    slow: float | None = None  # the tightest target that was slower
    record, seconds = [], 0.0
    for attempt in range(tries):
        model, info = lcpress_best(case, "cpu_latency", target, error)
        last = (target, model, info)
        seconds += info.get("seconds", 0.0)
        slowest = _slowest(case, model, reference, rounds)
        record.append(f"{target:.3f}: {slowest:.3f}×")
        log(f"  trained model at ratio {target:.3f}: {slowest:.3f}× the peer's latency")
        if slowest <= 1.0:
            fast = max(fast, (target, model, info), key=lambda f: f[0]) if fast else (target, model, info)
        else:
            slow = target if slow is None else min(slow, target)
        if margin <= slowest <= 1.0 or (slowest < margin and target >= 1.0):  # in the band, or at the dense price
            break
        target = (fast[0] + slow) / 2 if fast and slow is not None else min(1.0, target * aim / slowest)
    target, model, info = fast or last
    info.update(seconds=seconds, latency_ratio=target, **({"ratio_tries": ", ".join(record)} if tries > 1 else {}))
    return model, info


def _slowest(case: Case, model: nn.Module, reference: nn.Module, rounds: int) -> float:
    """``model``'s latency over ``reference``'s at the worse of the batch sizes."""
    pair = paired_latencies(case, model, reference, rounds)
    return max(pair[f"pair_ms_b{b}"] / pair[f"pair_peer_ms_b{b}"] for b in BATCHES)


def _direct(case: Case, ratio: float, error: str) -> tuple[nn.Module, dict[str, Any]]:
    """Direct compression at a cpu_latency target, realized, untrained (what the ratio search times)."""
    saved, case.passes = case.passes, 0
    try:
        return lcpress_run(case, "cpu_latency", ratio, error, steps=0)
    finally:
        case.passes = saved


# ------------------------------------------------------------------ the benchmark
Method = Callable[[], tuple[nn.Module, dict[str, Any]]]


def peer_methods(case: Case, ratio: float, aimet: bool, candidates: int) -> dict[str, Method]:
    """Every peer at one FLOPs budget, by name (``case.peers``: only those), each a call that trains it afresh."""
    methods: dict[str, Method] = {"uniform SVD": lambda: uniform_svd(case, ratio)}
    for scheme in case.aimet_schemes if aimet else ():
        methods["AIMET " + scheme.replace("_svd", " SVD")] = \
            lambda scheme=scheme: aimet_svd(case, ratio, scheme, candidates)
    methods["lcpress LC, flops target"] = lambda: lcpress_best(case, "flops", ratio)
    return {name: m for name, m in methods.items() if not case.peers or name in case.peers}


def run_budget(case: Case, ratio: float, aimet: bool, candidates: int, rounds: int, search: int, log,
               one_shot: bool = False, match: bool = True, margin: float = MARGIN,
               tries: int = 1) -> list[dict[str, Any]]:
    """Every method at one FLOPs budget; the rows of the table."""
    runs: dict[str, tuple[nn.Module, dict[str, Any]]] = {}

    def record(name: str, outcome: tuple[nn.Module, dict[str, Any]]) -> None:
        case.finish(outcome[0])
        runs[name] = outcome
        log(f"{case.name} {ratio:.0%} {name}: {case.evaluate(outcome[0])} ({outcome[1].get('seconds', 0):.0f} s)")

    for name, method in peer_methods(case, ratio, aimet, candidates).items():
        try:
            record(name, method())
        except Exception as exc:  # a peer that fails is reported, not hidden
            if not name.startswith("AIMET"):
                raise
            case.notes.append(f"{name} at {ratio:.0%} failed: {type(exc).__name__}: {str(exc)[:200]}")
            log(case.notes[-1])
    peers = dict(runs) if match else {}
    for peer, (reference, _) in peers.items():  # lcpress at each peer's own measured latency
        searched: dict[str | None, float] = {}  # one search per allocation, shared by both C-step errors
        for error, label in (("weight", LATENCY), ("output", AWARE))[:1 if case.weight_only else 2]:
            model, info = matched_allocation(case, reference, error, rounds, search, margin, log, tries, searched)
            target = info["latency_ratio"]
            info.update(matched_to=peer)
            record(f"{label} @ {peer}", (model, info))
            if one_shot:  # the same target, direct compression then the same passes of fine-tuning instead of LC
                with allocated(case, info.get("allocation")):
                    model, info = lcpress_run(case, "cpu_latency", target, error, steps=0,
                                              finetune_lr=first_rate(case))
                info.update(latency_ratio=target, matched_to=peer)
                record(f"{label.replace('LC', 'one-shot')} @ {peer}", (model, info))
    final = latencies(case, {"dense": case.dense, **{name: model for name, (model, _) in runs.items()}}, rounds)
    for name, (model, info) in runs.items():  # the bar's latencies: each matched model and its peer, in pairs
        if "matched_to" in info:
            info.update(paired_latencies(case, model, runs[info["matched_to"]][0], rounds))
    dense_flops = flops(case.timing(case.dense), case.example())
    rows = []
    for name, (model, info) in [("dense", (case.dense, {})), *runs.items()]:
        metrics = case.evaluate(model)
        rows.append({"budget": ratio, "method": name, **metrics,
                     **{f"ms_b{b}": final[name][b] for b in BATCHES},
                     "flops": flops(case.timing(model), case.example()) / dense_flops, **info,
                     "layers": layer_forms(case, model)})
    return rows


def matched_allocation(case: Case, reference: nn.Module, error: str, rounds: int, search: int, margin: float, log,
                       tries: int, searched: dict[str | None, float] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """lcpress matched to ``reference``'s latency: the ratio searched, then trained (:func:`matched_run`).

    With several ``case.allocations`` (weight-space runs only), each allocation is searched and trained on its
    own, since the same target buys a different structure, and so a different latency, under each; the one
    whose model scores best on the validation split is kept, every allocation's score recorded. ``searched``
    holds the ratio already found for an allocation against this reference (the search times direct
    compressions, which do not depend on the C step's error), so a later run reuses it.
    """
    searched = {} if searched is None else searched
    allocations = case.allocations if error == "weight" and len(case.allocations) > 1 else (None,)
    tried = []
    for allocation in allocations:
        with allocated(case, allocation):
            if allocation:
                log(f"  allocation {allocation}")
            key = case.options.get("allocation")
            if key not in searched:
                searched[key] = matched_ratio(case, {b: reference for b in BATCHES}, "weight", max(3, rounds // 2),
                                              search, log, margin)
            model, info = matched_run(case, reference, searched[key], error, max(3, rounds // 2), margin, log, tries)
        if allocation:
            info["allocation"] = allocation
            if "validation" not in info:  # lcpress_best scored it already when it chose a split
                case.finish(model)
                info["validation"] = (case.validate or case.score)(model)
        tried.append((info.get("validation", 0.0), model, info))
    best = max(tried, key=lambda t: t[0])  # ties: the first allocation listed
    if len(tried) > 1:
        best[2]["allocations"] = ", ".join(f"{t[2]['allocation']}: {t[0]:.4f}" for t in tried)
        best[2]["seconds"] = sum(t[2].get("seconds", 0.0) for t in tried)
    return best[1], best[2]


@contextlib.contextmanager
def allocated(case: Case, allocation: str | None):
    """``case`` with its low_rank allocation set to ``allocation`` for the duration (None: unchanged)."""
    saved = case.options
    if allocation:
        case.options = {**case.options, "allocation": allocation}
    try:
        yield case
    finally:
        case.options = saved


def seed_spread(case: Case, rows: list[dict[str, Any]], seeds: int, aimet: bool, candidates: int,
                log) -> list[dict[str, Any]]:
    """Each peer and the weight-space lcpress run matched to it, retrained with data-order seeds 1 … seeds − 1.

    Only training depends on the seed: the peers' ranks (uniform, AIMET's greedy search on the dense model) and
    the matched ``cpu_latency`` ratio (searched on untrained direct compressions) do not, so each seed reruns the
    same compressions with another order of the training data. Seed 0 is the table's own run.
    """
    metrics = list(case.evaluate(case.dense))
    spread = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        these = {r["method"]: r for r in rows if r["budget"] == budget}
        methods = peer_methods(case, budget, aimet, candidates)
        for peer, method in methods.items():
            mine = these.get(f"{LATENCY} @ {peer}")
            if peer not in these or mine is None:
                continue
            entries = {m: {"budget": budget, "peer": peer, "metric": m, "peer_scores": [these[peer][m]],
                           "lcpress_scores": [mine[m]]} for m in metrics}  # one per metric, seed 0 first
            for seed in range(1, seeds):
                case.seed = seed
                try:
                    def matched() -> tuple[nn.Module, dict[str, Any]]:
                        with allocated(case, mine.get("allocation")):
                            return lcpress_best(case, "cpu_latency", mine["latency_ratio"])

                    for key, run in (("peer_scores", method), ("lcpress_scores", matched)):
                        model = run()[0]
                        case.finish(model)
                        for m, score in case.evaluate(model).items():
                            entries[m][key].append(score)
                finally:
                    case.seed = 0
                first = entries[metrics[0]]
                log(f"{case.name} {budget:.0%} seed {seed}: {peer} {first['peer_scores'][-1]:.4f}, lcpress matched "
                    f"{first['lcpress_scores'][-1]:.4f}")
            spread += entries.values()
    return spread


def spread_table(spread: list[dict[str, Any]]) -> list[str]:
    """Per budget, peer and metric: the peer's score and the matched lcpress run's, per seed and on the mean."""
    lines = ["| budget | peer | metric | peer per seed | peer mean | lcpress per seed | lcpress mean | "
             "lcpress − peer, mean (sd of the differences) |", "|---|---|---|---|---:|---|---:|---|"]
    for e in spread:
        peer, mine = torch.tensor(e["peer_scores"]), torch.tensor(e["lcpress_scores"])
        gaps = mine - peer
        sd = f" ({float(gaps.std()):.4f})" if len(gaps) > 1 else ""
        per_seed = [" ".join(f"{v:.4f}" for v in scores.tolist()) for scores in (peer, mine)]
        lines.append(f"| {e['budget']:.0%} | {e['peer']} | {e['metric']} | {per_seed[0]} | {float(peer.mean()):.4f} | "
                     f"{per_seed[1]} | {float(mine.mean()):.4f} | {float(gaps.mean()):+.4f}{sd} |")
    return lines


def bar(rows: list[dict[str, Any]], metric: str, ours: str) -> list[str]:
    """For each budget and peer: has the ``ours`` run matched to that peer ≥ its metric at ≤ its latency (b=1 and 32)?"""
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        these = [r for r in rows if r["budget"] == budget]
        for peer in (r for r in these if r["method"] != "dense" and "matched_to" not in r):
            mine = next((r for r in these if r["method"] == f"{ours} @ {peer['method']}"), None)
            if mine is None:  # that run was skipped (--no-match, or --no-aware for the activation-aware bar)
                continue
            if "pair_ms_b1" in mine:  # timed with its peer alone (paired_latencies)
                times = [(mine[f"pair_peer_ms_b{b}"], mine[f"pair_ms_b{b}"]) for b in BATCHES]
            else:
                times = [(peer[f"ms_b{b}"], mine[f"ms_b{b}"]) for b in BATCHES]
            faster = all(ms <= peer_ms for peer_ms, ms in times)
            better = mine[metric] >= peer[metric]
            verdict = "met" if faster and better else "missed"
            lines.append(f"| {budget:.0%} | {peer['method']} | {peer[metric]:.4f} vs **{mine[metric]:.4f}** | "
                         + " | ".join(f"{peer_ms:.3f} vs {ms:.3f}" for peer_ms, ms in times) + f" | {verdict} |")
    return lines


def layer_forms(case: Case, model: nn.Module) -> str:
    """Each compressed layer as realized, whatever built it: rank and shape of a two-stage layer, or D (dense).

    ``8s``: rank 8, spatial (kh×1 then 1×kw); ``8i``: input (1×1 then k×k); ``8c``: channel (k×k then 1×1).
    """
    out = []
    for name in case.layers:
        module = lcpress.get_module(model, name)
        if not isinstance(module, nn.Sequential) or len(module) != 2:
            out.append("D")
            continue
        first = module[0]
        kernel = tuple(getattr(first, "kernel_size", (1, 1)))
        shape = "" if isinstance(first, nn.Linear) else "i" if kernel == (1, 1) else "s" if kernel[1] == 1 else "c"
        out.append(f"{getattr(first, 'out_channels', None) or first.out_features}{shape}")
    return " ".join(out)


def table(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    head = ["budget", "method", *metrics, "latency b=1 (ms)", "latency b=32 (ms)", "FLOPs", "‖w−Δ‖ first → last",
            "cpu_latency ratio", "wall (s)", "layers (rank, shape)"]
    split = any("splits" in r for r in rows)
    if split:
        head.insert(-1, "L steps + fine-tuning passes: validation")
    allocation = any("allocations" in r for r in rows)
    if allocation:
        head.insert(-1, "allocation: validation")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dist = f"{r['distance_first']:.3g} → {r['distance_last']:.3g}" if "distance_first" in r and r.get("steps") else ""
        cells = [f"{r['budget']:.0%}", r["method"], *(f"{r[m]:.4f}" for m in metrics),
                 *(f"{r[f'ms_b{b}']:.3f}" for b in BATCHES), f"{r['flops']:.1%}", dist,
                 _ratio(r), f"{r.get('seconds', 0):.0f}",
                 r.get("layers", "")]
        if split:
            cells.insert(-1, _splits(r))
        if allocation:
            cells.insert(-1, _allocations(r))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratio(row: dict[str, Any]) -> str:
    """The cpu_latency target ratio a matched run kept, and every target it tried (--tries) with its model's latency."""
    if "latency_ratio" not in row:
        return ""
    tries = row.get("ratio_tries")
    return f"{row['latency_ratio']:.3f}" + (f" (tried {tries} the peer)" if isinstance(tries, str) and tries else "")


def _splits(row: dict[str, Any]) -> str:
    """Every split of the passes an lcpress run tried (L steps + fine-tuning: validation metric), the kept one bold."""
    return _tried(row, "splits", "split")


def _allocations(row: dict[str, Any]) -> str:
    """Every allocation a matched run tried (allocation: validation metric), the kept one bold."""
    return _tried(row, "allocations", "allocation")


def _tried(row: dict[str, Any], tried: str, kept: str) -> str:
    """``row[tried]`` ("label: score, …") with the entry of ``row[kept]`` in bold; empty when nothing was tried."""
    if tried not in row:
        return ""
    prefix = f"{row[kept]}: "
    return ", ".join(f"**{t}**" if t.startswith(prefix) else t for t in row[tried].split(", "))


def plot(rows: list[dict[str, Any]], metric: str, out: Path, quick: bool) -> None:
    """Metric against measured latency (batch 1 and 32), one line per method."""
    if quick or importlib.util.find_spec("matplotlib") is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BATCHES), figsize=(6 * len(BATCHES), 4), dpi=90)
    line = lambda r: r["method"].split(" @ ")[0]  # noqa: E731 (lcpress's matched runs: one curve per variant)
    methods = list(dict.fromkeys(line(r) for r in rows))
    for ax, batch in zip(axes, BATCHES):
        for i, method in enumerate(methods):
            points = sorted((r[f"ms_b{batch}"], r[metric]) for r in rows if line(r) == method)
            if method == "dense":
                ax.axhline(points[0][1], color="grey", linestyle="--", linewidth=1, label="dense")
                ax.axvline(points[0][0], color="grey", linestyle=":", linewidth=1)
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="osD^vP*X"[i % 8], label=method)
        ax.set_xlabel(f"measured latency, batch {batch} (ms, 1 thread)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["resnet", "fchead", "minilm"], default="fchead")
    parser.add_argument("--budgets", default="0.3,0.5,0.7", help="FLOPs ratios of the compressed layers")
    parser.add_argument("--quick", action="store_true", help="tiny data, one budget, short runs: a smoke run")
    parser.add_argument("--no-aimet", action="store_true", help="leave AIMET out even where it is installed")
    parser.add_argument("--aimet-candidates", type=int, default=8, help="AIMET's num_comp_ratio_candidates")
    parser.add_argument("--chunk", type=int, help="training images (sentences) per pass, instead of the model's default")
    parser.add_argument("--one-shot", action="store_true",
                        help="also run lcpress one-shot (direct compression + the same fine-tuning) at the matched target")
    parser.add_argument("--latency-batch", default="32",
                        help="batch size the cpu_latency cost model measures layers at (the bar is at 1 and 32); "
                             "several, comma-separated (1,32): priced by time per example summed over them")
    parser.add_argument("--working-set-mb", type=lambda v: v if v == "auto" else float(v), default=0.0,
                        help="cpu_latency's working_set_mb: time each layer cycling weight copies this large, as inside "
                             "a model whose weights pass through the caches between its calls (0: cache-hot; auto: "
                             "the model's own weights)")
    parser.add_argument("--lr", type=float, help="the peers' fine-tuning learning rate, instead of the model's default")
    parser.add_argument("--lc-lr", type=float, help="lcpress's L-step learning rate, instead of the model's default")
    parser.add_argument("--no-match", action="store_true",
                        help="skip the latency-matched lcpress runs: the peers and the FLOPs-targeted LC run only")
    parser.add_argument("--shape", choices=["channel", "spatial", "input", "auto"],
                        help="low_rank's conv shape for lcpress's weight-space runs, instead of the model's default")
    parser.add_argument("--allocation",
                        help="low_rank's allocation for lcpress's runs: sum or minmax (default: the scheme's, sum); "
                             "both, sum,minmax: the latency-matched weight-space runs try each (searched and trained "
                             "apart) and keep the best on the validation split")
    parser.add_argument("--sensitivity", choices=["error", "measured"],
                        help="low_rank's sensitivity for lcpress's runs: measured shares the budget by the validation "
                             "accuracy lost with each layer alone compressed (AIMET's scores), instead of the default")
    parser.add_argument("--rank-multiple", type=int, help="low_rank's rank_multiple, instead of the model's default")
    parser.add_argument("--lc-splits", help="L-step counts to try for lcpress's weight-space runs, e.g. 8,4,2 (the "
                        "rest of the passes fine-tune the realized model); the best on the validation split is kept")
    parser.add_argument("--ft-lr", help="learning rate of lcpress's first fine-tuning pass (finetune.lr; default: "
                        "the L steps' rate, decaying on); several, e.g. 5e-4,2.5e-4: each split that fine-tunes tries "
                        "each, and the best on the validation split is kept")
    parser.add_argument("--no-aware", action="store_true", help="skip the activation-aware latency-matched runs")
    parser.add_argument("--search", type=int, default=6, help="bisection steps of the latency-matched ratio search")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help="a candidate fits when it runs at ≤ margin × the peer's latency during the search")
    parser.add_argument("--tries", type=int, default=1,
                        help="trained runs per latency-matched row: after each, the trained model is timed against "
                             "the peer, and the target moves until it runs at margin–100%% of the peer's latency")
    parser.add_argument("--peers", help="only these peers, by name, separated by ';' (e.g. 'AIMET weight SVD'), and "
                        "lcpress matched to them (default: every peer)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="retrain each peer and the lcpress run matched to it with this many data-order seeds "
                             "(seed 0 is the table's run) and add their spread")
    parser.add_argument("--out", help="default: benchmarks/results/equal_latency_<model>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one thread, timed by its own CPU clock
    logging.disable(logging.WARNING)
    os.environ.setdefault("LCPRESS_CACHE_DIR", str(Path(tempfile.gettempdir()) / "lcpress-equal-latency-tables"))
    out = Path(args.out or HERE / "results" / f"equal_latency_{args.model}.md")
    budgets = [0.5] if args.quick else [float(b) for b in args.budgets.split(",")]
    from equal_latency_cases import build  # noqa: E402 (the models and their data)

    case = build(args.model, args.quick, args.chunk)
    case.latency_batch = tuple(int(b) for b in str(args.latency_batch).split(","))
    case.working_set_mb = args.working_set_mb
    if args.shape:
        case.options = {**case.options, "shape": args.shape}
    if args.allocation:
        allocations = tuple(dict.fromkeys(a.strip() for a in args.allocation.split(",")))
        if unknown := [a for a in allocations if a not in ("sum", "minmax")]:
            parser.error(f"--allocation: {', '.join(map(repr, unknown))} is not an allocation; use sum, minmax or "
                         f"sum,minmax")
        case.options = {**case.options, "allocation": allocations[0]}
        case.allocations = allocations if len(allocations) > 1 else ()
    if args.rank_multiple:
        case.options = {**case.options, "rank_multiple": args.rank_multiple}
    if args.sensitivity:
        case.options = {**case.options, "sensitivity": args.sensitivity}
    case.weight_only = args.no_aware
    if args.peers:
        case.peers = tuple(name.strip() for name in args.peers.split(";"))
        known = list(peer_methods(dataclasses.replace(case, peers=()), 0.5, True, 1))
        if unknown := [name for name in case.peers if name not in known]:
            parser.error(f"--peers: no peer named {', '.join(map(repr, unknown))}; the peers are {', '.join(known)}")
    if args.ft_lr:
        case.finetune_lrs = tuple(float(r) for r in args.ft_lr.split(","))
    if args.lc_splits:
        case.lc_splits = tuple(int(s) for s in args.lc_splits.split(","))
        if any(not 0 <= s <= case.passes for s in case.lc_splits):
            parser.error(f"--lc-splits: every L-step count must be between 0 and the {case.passes} passes")
    if args.lr:
        case.train_config = dataclasses.replace(case.train_config, lr=args.lr)
    if args.lc_lr:
        case.lc_train_config = dataclasses.replace(case.train_config, lr=args.lc_lr)
    aimet = not args.no_aimet and importlib.util.find_spec("aimet_torch") is not None
    if not aimet:
        case.notes.append("AIMET rows: not run (aimet_torch is not installed here; bash benchmarks/make_peer_env.sh)"
                          if not args.no_aimet else "AIMET rows: left out (--no-aimet)")
    rounds = 3 if args.quick else 15
    started = time.perf_counter()
    log = lambda text: print(text, flush=True)  # noqa: E731
    search = 2 if args.quick else args.search
    rows: list[dict[str, Any]] = []
    spread: list[dict[str, Any]] = []
    candidates = 3 if args.quick else args.aimet_candidates
    for ratio in budgets:  # the results are written after every budget, so a long run keeps what it finished
        budget_rows = run_budget(case, ratio, aimet, candidates, rounds, search, log, args.one_shot,
                                 match=not args.no_match, margin=args.margin, tries=args.tries)
        rows += budget_rows
        if args.seeds > 1 and not args.no_match:
            spread += seed_spread(case, budget_rows, args.seeds, aimet, candidates, log)
        write(case, rows, args, out, rounds, time.perf_counter() - started, spread)


def protocol(case: Case, seeds: int) -> str:
    """What every method trained with, what lcpress chose among, the seeds and the peers: the results' preamble."""
    train = case.train_config
    text = (f"Training for every method: {case.passes} passes of one training chunk ({train.optimizer}, lr {train.lr}"
            f" × {train.lr_decay}^k); LC: schedule {case.schedule}, L-step lr {case.lc_train().lr}")
    if case.lc_splits or len(case.finetune_lrs) > 1:
        splits = ", ".join(map(str, case.lc_splits or (case.schedule["steps"],)))
        rates = (f" (from lr {' or '.join(f'{r:g}' for r in case.finetune_lrs)}, × {case.lc_train().lr_decay} per "
                 f"pass)") if case.finetune_lrs else ""
        text += (f"; lcpress's weight-space runs try {splits} L steps, the rest of the passes fine-tuning the "
                 f"realized model{rates}, and keep the best on the validation split")
    if case.allocations:
        text += (f"; lcpress's latency-matched weight-space runs try the {' and '.join(case.allocations)} "
                 f"allocations, each searched to the peer's latency and trained, and keep the best on the "
                 f"validation split")
    text += ". Seeds: dense training 0, data order 0, C steps 0"
    if seeds > 1:
        text += f" (the seed spread: data order and C steps 0–{seeds - 1})"
    if case.peers:
        text += f"; peers: {', '.join(case.peers)} only"
    at = ("batch " + str(case.latency_batch[0]) if len(case.latency_batch) == 1 else
          "batches " + " and ".join(map(str, case.latency_batch)) + " (time per example, summed)")
    cycled = (", cache-hot" if not case.working_set_mb else ", each timed cycling weight copies as large as the model's "
              "weights (working_set_mb: auto)" if case.working_set_mb == "auto" else
              f", each timed cycling {case.working_set_mb:g} MB of weight copies")
    return text + f". cpu_latency prices layers at {at}{cycled}."


def write(case: Case, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path, rounds: int,
          seconds: float, spread: list[dict[str, Any]] | None = None) -> None:
    """The table, the bar, the seed spread (--seeds), the CSV and the plot of the budgets done so far."""
    metrics = list(case.evaluate(case.dense))
    metric = metrics[0]
    lines = table(rows, metrics)
    matched = (("lcpress LC with the cpu_latency target", LATENCY), ("the activation-aware run", AWARE))
    for label, ours in () if args.no_match else matched[:1] if case.weight_only else matched:
        lines += ["", f"Bar — {label}, run at each peer's measured latency, vs that peer ({metric}; latency "
                      f"b=1, b=32 in ms, each matched model timed with its peer alone, in turns; peer vs "
                      f"lcpress):", "",
                  f"| budget | peer | {metric} | latency b=1 | latency b=32 | bar |", "|---|---|---|---|---|---|",
                  *bar(rows, metric, ours)]
    if spread:
        lines += ["", f"Spread over training seeds — each peer and the lcpress run matched to it (weight-space C "
                      f"step, the same cpu_latency ratio), retrained with data-order seeds 0–{args.seeds - 1} "
                      f"(latency not retimed: only training depends on the seed):", "",
                  *spread_table(spread)]
    done = ",".join(f"{b:g}" for b in dict.fromkeys(r["budget"] for r in rows))
    preamble = (f"Machine: {describe()}; load average {os.getloadavg()[0]:.1f} when written (2 cores, shared with "
                f"other jobs). {latency_note(rounds)} Command: `python benchmarks/equal_latency.py "
                f"{shlex.join(sys.argv[1:])}` (budgets done: {done}). {protocol(case, args.seeds if spread else 1)} "
                f"Wall time so far: {seconds:.0f} s." + "".join(f" {n}." for n in case.notes))
    publish(f"Equal measured latency: {case.name}", preamble, lines, str(out), args.quick)
    if not args.quick:
        import csv

        with open(out.with_suffix(".csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    plot(rows, metric, out, args.quick)

if __name__ == "__main__":
    main()
