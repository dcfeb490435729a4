"""Measured cost models: lazy measurement, per-device tables, corruption, GPU availability."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import torch
from torch import nn

import lcpress
from lcpress.core.measured import PRIMITIVES_VERSION
from lcpress.core.forms import Dense, LayerSpec, LowRank
from lcpress.core.registry import get_registry, using_plugins

CpuLatency = get_registry().cost_model("cpu_latency")
SPEC = LayerSpec("linear", 64, 64, (1, 64))


class StairTimer(CpuLatency):
    """A deterministic 'CPU': ranks that are multiples of 8 run fast, others pay a penalty."""

    name = "stair_latency"
    calls: list = []

    def measure(self, spec, form):
        StairTimer.calls.append(form)
        if isinstance(form, LowRank):
            return form.rank / 8 if form.rank % 8 == 0 else form.rank / 8 + 3.0
        return 100.0

    def fingerprint(self):
        return {"device": "stairs"}

    def measure_model(self, model, example_input):
        return None  # no whole-model timing on the real CPU at the end of a run


class StairPlugin:
    """A plugin registering one test cost model (the StairTimer unless told)."""

    def __init__(self, timer: type | None = None):
        self.timer = timer or StairTimer
        self.__name__ = f"{self.timer.name}_plugin"

    @lcpress.hookimpl
    def lcpress_register_cost_models(self, register):
        register(self.timer)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path / "cache"))
    StairTimer.calls = []
    return tmp_path / "cache"


def _compress(cost_name, ratio=0.3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    cfg = {"tasks": [{"layers": ["0", "2"], "options": {"rank_multiple": 1}, "cost": cost_name,
                      "target": {"cost": cost_name, "ratio": ratio}}], "schedule": {"steps": 0}}
    return lcpress.compress(model, cfg, example_input=torch.randn(1, 64))


def test_selection_picks_the_fast_ranks(cache):
    with using_plugins(StairPlugin()):
        result = _compress("stair_latency", ratio=0.05)  # a binding budget: 10 of 200 "ms"
    assert result.history["target0_achieved"].iloc[0] <= 10
    for task, state in zip(result.tasks, result.states):
        form = task.scheme.form(state)
        assert isinstance(form, LowRank) and form.rank % 8 == 0


def test_second_run_is_served_from_the_table(cache, monkeypatch, capsys):
    monkeypatch.delenv("LCPRESS_QUIET", raising=False)  # the per-step lines, where the measuring is said
    with using_plugins(StairPlugin()):
        _compress("stair_latency")
        said = capsys.readouterr().err
        # one 64→64 shape: dense and ranks 1–32 timed; ranks 33–63 do more FLOPs and store more than dense
        assert "stair_latency: measured 33 forms of 2 layers in" in said
        assert "(31 more do more FLOPs and store more than dense: priced from dense, not timed)" in said
        first = len(StairTimer.calls)
        assert first > 0
        model = StairTimer()
        assert model.cost(SPEC, LowRank(8)) == 1.0
        _compress("stair_latency")
    assert len(StairTimer.calls) == first  # nothing measured again
    assert "measured" not in capsys.readouterr().err
    table = json.loads(next(cache.glob("stair_latency-*.json")).read_text())
    # the staircase's steps were measured again (see the recheck tests), so fewer entries than calls
    assert table["fingerprint"] == {"device": "stairs", "primitives": PRIMITIVES_VERSION} and len(table["entries"]) == len(set(map(repr, StairTimer.calls)))


def test_another_device_measures_afresh(cache):
    StairTimer().cost(SPEC, LowRank(8))

    class OtherDevice(StairTimer):
        def fingerprint(self):
            return {"device": "another"}

    other = OtherDevice()
    other.cost(SPEC, LowRank(8))
    assert other.measurements == 1
    assert len(list(cache.glob("stair_latency-*.json"))) == 2


def test_a_table_with_a_foreign_fingerprint_inside_is_ignored(cache, caplog):
    model = StairTimer()
    model.cost(SPEC, LowRank(8))
    path = model.table.path
    doc = json.loads(path.read_text())
    doc["fingerprint"] = {"device": "forged"}
    path.write_text(json.dumps(doc))
    fresh = StairTimer()
    with caplog.at_level(logging.WARNING):
        fresh.cost(SPEC, LowRank(8))
    assert fresh.measurements == 1 and "another device" in caplog.text


def test_a_table_is_written_once_per_layer_not_once_per_measurement(cache, monkeypatch):
    """Rewriting a table of thousands of entries after every measurement made filling it quadratic."""
    import lcpress.core.measured as measured

    writes = []
    real = measured.write_text_atomic
    monkeypatch.setattr(measured, "write_text_atomic", lambda path, text: (writes.append(path), real(path, text)))
    model = StairTimer()
    model.recheck_factor = None  # the stairs would be measured again: count the first measurements only
    forms = [LowRank(r) for r in range(1, 33)]
    model.costs(SPEC, forms)
    assert len(StairTimer.calls) == 32 and len(writes) <= 2  # at most the first put and the layer's flush
    assert len(json.loads(model.table.path.read_text())["entries"]) == 32
    fresh = StairTimer()
    fresh.costs(SPEC, forms)
    assert len(StairTimer.calls) == 32  # every entry was on disk: nothing measured again


@pytest.mark.parametrize("damage", ['{"format": "lcpress-cost-table", "entries": {broken', "[]", "null", "[" * 100_000])
def test_a_corrupted_table_is_set_aside_and_rebuilt(cache, caplog, damage):
    model = StairTimer()
    model.cost(SPEC, LowRank(8))
    path = model.table.path
    path.write_text(damage)
    fresh = StairTimer()
    with caplog.at_level(logging.WARNING):
        assert fresh.cost(SPEC, LowRank(8)) == 1.0
    assert "unreadable" in caplog.text
    assert list(cache.glob("stair_latency-*.json.corrupt-*"))
    assert json.loads(path.read_text())["entries"]  # rebuilt


def test_an_entry_that_is_not_a_number_damages_the_table(cache, caplog):
    model = StairTimer()
    model.cost(SPEC, LowRank(8))
    doc = json.loads(model.table.path.read_text())
    doc["entries"] = {key: True for key in doc["entries"]}  # JSON true would read as 1.0
    model.table.path.write_text(json.dumps(doc))
    fresh = StairTimer()
    with caplog.at_level(logging.WARNING):
        assert fresh.cost(SPEC, LowRank(8)) == 1.0 and fresh.measurements == 1
    assert "not a number" in caplog.text


def test_a_folder_that_cannot_be_written_keeps_the_table_in_memory_with_one_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(blocker / "cache"))  # a folder under a file cannot be made
    model = StairTimer()
    with caplog.at_level(logging.WARNING):
        assert model.cost(SPEC, LowRank(8)) == 1.0 and model.cost(SPEC, LowRank(16)) == 2.0
        assert model.cost(SPEC, LowRank(8)) == 1.0
    assert model.measurements == 2 and caplog.text.count("cannot be written") == 1
    assert "LCPRESS_CACHE_DIR" in caplog.text


def test_a_damaged_table_that_cannot_be_moved_aside_is_measured_afresh(cache, monkeypatch, caplog):
    model = StairTimer()
    model.cost(SPEC, LowRank(8))
    model.table.path.write_text("{broken")

    def refused(*args):
        raise PermissionError("read-only folder")

    monkeypatch.setattr("lcpress.core.measured.os.replace", refused)
    fresh = StairTimer()
    with caplog.at_level(logging.WARNING):
        assert fresh.cost(SPEC, LowRank(8)) == 1.0
    assert "cannot be moved aside" in caplog.text


def test_two_processes_filling_one_table_keep_each_others_entries(cache):
    first, second = StairTimer(), StairTimer()  # each reads the table once, before the other writes
    first.table, second.table  # noqa: B018 (load both now)
    first.cost(SPEC, LowRank(8))
    second.cost(SPEC, LowRank(16))
    entries = json.loads(first.table.path.read_text())["entries"]
    assert len(entries) == 2


def test_a_layer_run_three_times_costs_three_calls_measured_once(cache):
    model = StairTimer()
    once, thrice = SPEC, SPEC.with_(calls=3)
    assert model.costs(thrice, [LowRank(8), Dense()]).tolist() == [3.0, 300.0]
    assert model.cost(thrice, LowRank(8)) == 3 * model.cost(once, LowRank(8))
    assert model.measurements == 2  # rank 8 and dense, each once


def test_plugin_forms_that_leave_kind_unset_never_share_table_entries(cache):
    from dataclasses import dataclass

    from lcpress.core.forms import Form
    from lcpress.core.measured import table_key

    @dataclass(frozen=True)
    class Thin(Form):
        rank: int

    @dataclass(frozen=True)
    class Fat(Form):
        rank: int

    assert table_key(SPEC, Thin(8), {}) != table_key(SPEC, Fat(8), {})
    assert '"class"' not in table_key(SPEC, LowRank(8), {})  # built-in forms keep the keys they had


def test_a_compressed_model_measured_slower_than_dense_is_a_warning_of_the_run(cache, monkeypatch):
    """The layer prices said faster; the whole model, timed at the end, says otherwise: the run says so."""
    monkeypatch.setattr(StairTimer, "measure_model", lambda self, model, x: float(len(list(model.modules()))),
                        raising=False)
    with using_plugins(StairPlugin()):
        result = _compress("stair_latency", ratio=0.05)
    assert "measured stair_latency of the whole model" in result.measured[0]
    assert any("measured no faster than the dense one under stair_latency" in w for w in result.warnings)


def test_real_cpu_timer_smoke(cache):
    model = CpuLatency(CpuLatency.Options(min_run_time=0.01, threads=1))
    costs = model.costs(LayerSpec("linear", 32, 32, (4, 32)), [Dense(), LowRank(8)])
    assert all(math.isfinite(c) and c > 0 for c in costs.tolist())
    assert model.fingerprint()["threads"] == 1


def test_the_thread_clock_needs_one_thread_and_measures_apart_from_the_wall_clock(cache):
    with pytest.raises(lcpress.ConfigError, match="clock.*threads: 1"):
        CpuLatency.Options.from_dict({"clock": "thread", "threads": 2})
    spec = LayerSpec("linear", 32, 32, (4, 32))
    wall = CpuLatency(CpuLatency.Options(min_run_time=0.01, threads=1))
    thread = CpuLatency(CpuLatency.Options(min_run_time=0.01, threads=1, clock="thread"))
    assert thread._clock is time.thread_time and wall._clock is time.perf_counter
    assert wall.cost(spec, Dense()) > 0 and thread.cost(spec, Dense()) > 0
    assert wall.measurements == thread.measurements == 1  # the clock is part of the table key
    assert thread.measure_model(nn.Linear(32, 32), torch.randn(4, 32)) > 0


@pytest.mark.parametrize("name", ["gpu_latency", "gpu_energy"])
def test_gpu_models_say_why_they_are_unavailable(name, cache):
    model = get_registry().cost_model(name)()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the unavailable path does not apply")
    assert "CUDA" in model.unavailable_reason()
    with pytest.raises(lcpress.LcpressError, match=f"cost model '{name}' is not available here: .*CUDA"):
        _compress(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_latency_measures_on_the_gpu(cache):
    model = get_registry().cost_model("gpu_latency")(get_registry().cost_model("gpu_latency").Options(repeats=5))
    assert model.cost(LayerSpec("linear", 256, 256, (8, 256)), Dense()) > 0
    assert model.fingerprint()["uuid"]


def test_working_set_cycles_weight_copies(cache):
    from lcpress.core.measured import form_module

    spec = LayerSpec("linear", 64, 64, (2, 64))
    hot = CpuLatency(CpuLatency.Options(min_run_time=0.01))
    cold = CpuLatency(CpuLatency.Options(min_run_time=0.01, working_set_mb=1))
    module = form_module(spec, Dense())
    assert hot._working_set_ratio(module) == 1.0
    assert cold._working_set_ratio(module) == pytest.approx(2**20 / (64 * 64 * 4 + 64 * 4))
    assert math.isfinite(cold.cost(spec, Dense())) and cold.cost(spec, Dense()) > 0
    # the working set is part of what was measured: the two do not share table entries
    assert hot.cost(spec, Dense()) > 0 and hot.measurements == 1


class TiedLM(nn.Module):
    """A token table, a Linear, and an output layer tied to the table (it stores its bias alone)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(1000, 32)
        self.mix = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1000)
        self.out.weight = self.table.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.table(ids))))


def test_working_set_auto_is_the_weights_a_forward_reads(cache):
    """The Linear's 32·32 + 32 numbers and the tied output's 1,000 biases; the table's rows are looked up."""
    from lcpress.costmodels.cpu_latency import weight_mb

    class Priced(StairTimer):
        name = "priced_latency"

    cfg = {"tasks": [{"layers": ["mix"], "options": {"rank_multiple": 8}, "cost": "priced_latency",
                      "target": {"cost": "priced_latency", "ratio": 0.5}}], "schedule": {"steps": 0},
           "cost_models": {"priced_latency": {"working_set_mb": "auto", "batch_sizes": [1, 4]}}}
    with using_plugins(StairPlugin(Priced)):
        profile = lcpress.profile_costs(TiedLM(), cfg, torch.randint(1000, (1, 8)), progress=False)
    model = profile.measured["priced_latency"]
    expected = round((32 * 32 + 32 + 1000) * 4 / 2**20, 3)
    assert model.options.working_set_mb == expected
    assert {m.options.working_set_mb for m in model._at_batch.values()} == {expected}  # every batch size's timer
    half = weight_mb({"mix": LayerSpec("linear", 32, 32, (1, 32))}, "float16")
    assert half == round((32 * 32 + 32) * 2 / 2**20, 3)


def test_working_set_auto_outside_a_run_says_what_to_do(cache):
    model = CpuLatency(CpuLatency.Options(min_run_time=0.01, working_set_mb="auto"))
    with pytest.raises(lcpress.LcpressError, match="for_layers"):
        model.cost(SPEC, Dense())


@pytest.mark.parametrize("value, said", [("most", "working_set_mb"), (-1, "non-negative")])
def test_working_set_must_be_megabytes_or_auto(value, said):
    with pytest.raises(lcpress.ConfigError, match=said):
        CpuLatency.Options.from_dict({"working_set_mb": value}, "cost_models.cpu_latency")


def test_a_working_set_between_whole_copies_interpolates(cache, monkeypatch):
    from lcpress.core.measured import form_module

    spec = LayerSpec("linear", 64, 64, (2, 64), bias=False)
    layer_mb = 64 * 64 * 4 / 2**20
    model = CpuLatency(CpuLatency.Options(min_run_time=0.01, working_set_mb=2.25 * layer_mb))
    times = {2: 1.0, 3: 3.0}  # ms per call with 2 and with 3 copies cycled
    monkeypatch.setattr(CpuLatency, "_time", lambda self, module, x, copies: times[copies])
    assert model.measure(spec, Dense()) == pytest.approx(1.0 + 0.25 * (3.0 - 1.0))
    assert model._working_set_ratio(form_module(spec, Dense())) == pytest.approx(2.25)


class BusyTimer(StairTimer):
    """Ranks cost rank/8; the first measurement of each rank in ``busy`` comes back ``slowdown`` × too slow."""

    name = "busy_latency"
    busy: set = set()
    slowdown = 25.0

    def measure(self, spec, form):
        StairTimer.calls.append(form)
        if isinstance(form, Dense):
            return 0.5  # another structure: never compared with the factorizations
        if form.rank in BusyTimer.busy:
            BusyTimer.busy.discard(form.rank)
            return self.slowdown * form.rank / 8
        return form.rank / 8

    def fingerprint(self):
        return {"device": "busy"}


@pytest.mark.parametrize("order", [(8, 16, 24), (16, 8, 24)])
def test_a_measurement_slowed_by_a_busy_core_is_measured_again(cache, order):
    BusyTimer.busy = {16}
    model = BusyTimer()
    costs = model.costs(SPEC, [LowRank(rank) for rank in order]).tolist()
    assert dict(zip(order, costs)) == {8: 1.0, 16: 2.0, 24: 3.0}
    assert model.remeasured == 1 and len(StairTimer.calls) == 4
    assert model.cost(SPEC, LowRank(16)) == 2.0 and model.costs(SPEC, [LowRank(16)]).tolist() == [2.0]
    assert BusyTimer().cost(SPEC, LowRank(16)) == 2.0  # the table holds the value measured again


def test_a_measurement_slowed_by_a_third_is_measured_again_too(cache):
    class Sibling(BusyTimer):  # a busy sibling core: 1.4× slower, which the thread clock still counts
        slowdown = 1.4

    BusyTimer.busy = {16}
    model = Sibling()
    assert model.costs(SPEC, [LowRank(rank) for rank in (8, 16, 24)]).tolist() == [1.0, 2.0, 3.0]
    assert model.remeasured == 1


def test_a_staircase_that_holds_when_measured_again_is_kept(cache, caplog):
    model = StairTimer()
    with caplog.at_level(logging.INFO, logger="lcpress.measured"):
        costs = [model.cost(SPEC, LowRank(rank)) for rank in (8, 7, 16, 15)]
    assert costs == [1.0, 7 / 8 + 3.0, 2.0, 15 / 8 + 3.0]
    # rank 7 is out of line with rank 8 and rank 15 with 16: each measured again twice, no more
    assert model.remeasured == 2 * StairTimer.recheck_attempts
    assert "rank 7" in caplog.text and "kept as measured" in caplog.text


def test_forms_of_different_structure_are_not_compared(cache):
    model = BusyTimer()
    BusyTimer.busy = set()
    assert model.cost(SPEC, LowRank(24)) == 3.0 and model.cost(SPEC, Dense()) == 0.5  # dense 6× faster: fine
    assert model.remeasured == 0


def test_the_recheck_can_be_turned_off(cache):
    class Trusting(BusyTimer):
        recheck_factor = None

    BusyTimer.busy = {16}
    model = Trusting()
    assert [model.cost(SPEC, LowRank(r)) for r in (8, 16)] == [1.0, 50.0] and model.remeasured == 0


TINYJOB = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

def model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

def data():
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    ds = TensorDataset(x, (x[:, 0] > 0).long())
    return DataLoader(ds, batch_size=1), DataLoader(ds, batch_size=16)
'''


@pytest.fixture
def stair_job(tmp_path, monkeypatch, cache):
    (tmp_path / "tinyjob.py").write_text(TINYJOB)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "model": {"factory": "tinyjob:model"}, "data": {"factory": "tinyjob:data"},
        "tasks": [{"layers": ["0"], "options": {"rank_multiple": 1}, "cost": "stair_latency",
                   "target": {"cost": "stair_latency", "ratio": 0.05}}],
        "schedule": {"steps": 0}, "output_dir": str(tmp_path / "run")}))
    with using_plugins(StairPlugin()):
        yield config


def test_profile_fills_the_table_that_costs_then_reads(stair_job, capsys):
    from lcpress.cli import main

    assert main(["profile", str(stair_job), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stair_latency" in out and "measured now" in out and "rank 8" in out  # the cheapest form is printed
    profiled = len(StairTimer.calls)
    assert profiled >= 64  # every candidate rank of the 64×64 layer, and the dense form
    assert main(["costs", str(stair_job)]) == 0
    table = capsys.readouterr().out
    assert "stair_latency" in table and "0" in table
    assert "realized" not in table.splitlines()[0]  # a preview realizes nothing
    # `costs` read every candidate back from the table; it measured only the layer no task compresses
    assert StairTimer.calls[profiled:] == [Dense()]


def test_profile_says_when_no_cost_model_measures(tmp_path, monkeypatch, capsys, cache):
    from lcpress.cli import main

    (tmp_path / "tinyjob.py").write_text(TINYJOB)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"model": {"factory": "tinyjob:model"}, "data": {"factory": "tinyjob:data"},
                                  "tasks": [{"layers": ["0"], "target": {"cost": "flops", "ratio": 0.5}}]}))
    assert main(["profile", str(config)]) == 0
    assert "no measured cost model" in capsys.readouterr().out


def test_the_whole_model_is_timed_in_the_dtype_the_layers_were(cache, monkeypatch):
    """A bfloat16 table beside a float32 whole-model time compared two different things."""
    import lcpress.costmodels.cpu_latency as cpu

    timed = []

    class Recording(cpu.benchmark.Timer):
        def __init__(self, stmt, globals, **kwargs):
            timed.append((globals["model"].weight.dtype, globals["x"].dtype))
            super().__init__(stmt, globals=globals, **kwargs)

    monkeypatch.setattr(cpu.benchmark, "Timer", Recording)
    model = nn.Linear(16, 16)
    latency = CpuLatency(CpuLatency.Options.from_dict({"dtype": "bfloat16", "min_run_time": 0.01}))
    assert latency.measure_model(model, torch.randn(2, 16)) > 0
    assert timed == [(torch.bfloat16, torch.bfloat16)] and model.weight.dtype == torch.float32  # a converted copy


@pytest.mark.parametrize("sizes", [{"batch_size": 8}, {"batch_sizes": [1, 8]}])
def test_batch_size_over_layers_whose_first_dimension_is_not_the_batch_is_a_warning(cache, caplog, sizes):
    class Flattened(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x):  # (batch, tokens, width) → (batch·tokens, width)
            return self.out(self.fc(x.reshape(-1, x.shape[-1])))

    config = {"tasks": [{"layers": ["fc"], "options": {"rank": 4, "rank_multiple": 1}}],
              "cost_models": {"stair_latency": sizes}}
    with using_plugins(StairPlugin()), caplog.at_level(logging.WARNING, logger="lcpress"):
        lcpress.predict_costs(Flattened(), config, torch.randn(1, 16, 32))
        assert "fc, out take inputs whose first dimension is not the example's batch of 1" in caplog.text
        caplog.clear()
        plain = dict(config, tasks=[{"layers": ["0"], "options": {"rank": 4}}])
        lcpress.predict_costs(nn.Sequential(nn.Linear(32, 32)), plain, torch.randn(2, 32))
    assert "first dimension" not in caplog.text


def test_a_measurement_ends_at_its_block_limit(monkeypatch):
    """adaptive_autorange re-summarises every block after each one: bounded, a measurement cannot run away."""
    from torch.utils import benchmark

    import lcpress.costmodels.cpu_latency as cpu

    monkeypatch.setattr(cpu, "MAX_BLOCKS", 5)
    seen = []
    timer = benchmark.Timer("x + 1", globals={"x": torch.ones(1)})
    real = timer.adaptive_autorange
    monkeypatch.setattr(timer, "adaptive_autorange",
                        lambda callback, **kw: real(callback=lambda n, t: (seen.append(t), callback(n, t)), **kw))
    value = cpu.median_seconds(timer, {"min_run_time": 60.0, "max_run_time": 600.0})  # minutes, were it not bounded
    assert len(seen) == 5 and 0 < value < 1e-2


def _batch_times(self, module, x, copies):
    """A deterministic CPU: a call costs its weights' size per example, plus 5 ms of overhead per call at batch 1."""
    size = sum(p.numel() for p in module.parameters()) / 1000
    return size * x.shape[0] + (5.0 if x.shape[0] == 1 else 0.0)


def test_several_batch_sizes_price_the_time_per_example_summed_from_single_batch_entries(cache, monkeypatch):
    monkeypatch.setattr(CpuLatency, "_time", _batch_times)
    forms = [Dense(), LowRank(8), LowRank(16)]
    both = CpuLatency(CpuLatency.Options.from_dict({"batch_sizes": [1, 4], "min_run_time": 0.01}))
    summed = both.costs(SPEC, forms)
    assert both.measurements == 6  # three forms at two batch sizes
    singles = {b: CpuLatency(CpuLatency.Options.from_dict({"batch_size": b, "min_run_time": 0.01})) for b in (1, 4)}
    apart = singles[1].costs(SPEC, forms) + singles[4].costs(SPEC, forms) / 4
    assert torch.equal(summed, apart)
    assert singles[1].measurements == singles[4].measurements == 0  # the batch_sizes run filled their entries
    assert both.cost(SPEC, LowRank(8)) == pytest.approx(float(summed[1]))
    model = nn.Sequential(nn.Linear(64, 64))
    monkeypatch.setattr("lcpress.costmodels.cpu_latency.median_seconds",
                        lambda timer, run_times: timer._globals["x"].shape[0] * 1e-3)  # 1 ms per example
    assert both.measure_model(model, torch.randn(1, 64)) == pytest.approx(1.0 + 4.0 / 4)


@pytest.mark.parametrize("options, message", [
    ({"batch_sizes": [1, 32], "batch_size": 8}, "not both"),
    ({"batch_sizes": [0, 32]}, "whole numbers"),
    ({"batch_sizes": [32, 32]}, "each batch size once"),
])
def test_bad_batch_sizes_name_the_option(options, message):
    with pytest.raises(lcpress.ConfigError, match=rf"batch_sizes.*{message}"):
        CpuLatency.Options.from_dict(options)


class BatchStairs(StairTimer):
    """A 'CPU' whose staircase depends on the batch: at batch 32 rank 16 runs as fast as rank 8; at batch 1 it
    costs twice rank 8, as its work says."""

    name = "batch_stairs"

    def measure(self, spec, form):
        if self.options.batch_sizes:
            return CpuLatency.measure(self, spec, form)  # the sum over one-batch instances of this class
        if not isinstance(form, LowRank):
            return 40.0
        if self.options.batch_size == 32 and form.rank == 16:
            return 8.0
        return float(form.rank)

    def fingerprint(self):
        return {"device": "batch stairs"}


@pytest.mark.parametrize("sizes, rank", [({"batch_size": 32}, 16), ({"batch_sizes": [1, 32]}, 8)])
def test_a_budget_over_several_batch_sizes_keeps_off_one_batch_size_s_staircase(cache, sizes, rank):
    """Priced at batch 32 alone, rank 16 is as cheap as rank 8 and wins; over batches 1 and 32 it costs more,
    and a budget a quarter of dense fits rank 8 only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    cfg = {"tasks": [{"layers": ["0"], "options": {"rank_multiple": 8}, "cost": "batch_stairs",
                      "target": {"cost": "batch_stairs", "ratio": 0.25}}],
           "cost_models": {"batch_stairs": sizes}, "schedule": {"steps": 0}}
    with using_plugins(StairPlugin(BatchStairs)):
        result = lcpress.compress(model, cfg, example_input=torch.randn(1, 64), progress=False)
    assert result.tasks[0].scheme.form(result.states[0]) == LowRank(rank)


def test_messages_say_at_which_batch_sizes_a_price_holds():
    from lcpress.core.costmodel import batch_text

    def text(options, default):
        return batch_text(CpuLatency(CpuLatency.Options.from_dict(options)), default)

    assert text({"batch_sizes": [1, 32]}, 4) == " at batches 1, 32 (per example, summed)"
    assert text({"batch_size": 8}, 4) == " at batch 8"
    assert text({}, 4) == " at batch 4" and text({}, None) == ""


def test_a_form_doing_more_work_than_dense_is_priced_from_dense_not_timed(cache):
    """64→64: rank 32 breaks even (bias aside); rank 40 does 1.25× dense's FLOPs and stores more."""
    model = StairTimer()
    prices = model.costs(SPEC, [LowRank(32), LowRank(40), Dense()]).tolist()
    assert prices == [4.0, 125.0, 100.0]  # rank 40: dense's 100 × its 1.25× FLOPs, above dense
    assert LowRank(40) not in StairTimer.calls and LowRank(32) in StairTimer.calls
    assert model.estimated == {(SPEC, LowRank(40))} and model.measurements == 2


def test_a_subclass_can_time_forms_doing_more_work(cache):
    class Thorough(StairTimer):
        measure_more_work = True

    model = Thorough()
    assert model.cost(SPEC, LowRank(40)) == 5.0 and LowRank(40) in StairTimer.calls
    assert model.estimated == set()


def test_a_low_rank_embedding_storing_less_is_timed_though_its_lookup_counts_no_flops(cache):
    table = LayerSpec("embedding", 1000, 64, (1, 16), bias=False)
    model = StairTimer()
    assert model.cost(table, LowRank(56)) == 7.0  # 56·1064 numbers < 64,000: timed, though it does more FLOPs
    assert model.cost(table, LowRank(64)) == 100.0 * 64 * 1064 / 64_000  # stores more: dense × its storage ratio
    assert StairTimer.calls == [LowRank(56), Dense()]


def test_pricing_more_work_from_dense_changes_no_selection(cache):
    """On a CPU where more work takes longer, a budgeted run chooses the same ranks whether forms above
    break-even are timed or not (StairTimer's dense layer is slower than any rank: there they would differ)."""
    class Proportional(StairTimer):
        name = "proportional_latency"

        def measure(self, spec, form):
            return 4.5 if isinstance(form, Dense) else super().measure(spec, form)  # rank 32's FLOPs: 4.0

    class Thorough(Proportional):
        name = "thorough_latency"
        measure_more_work = True

    chosen = []
    for timer in (Proportional, Thorough):
        with using_plugins(StairPlugin(timer)):
            for ratio in (0.05, 0.3, 0.9):
                result = _compress(timer.name, ratio=ratio)
                chosen.append([t.scheme.form(s) for t, s in zip(result.tasks, result.states)])
    assert chosen[:3] == chosen[3:]
