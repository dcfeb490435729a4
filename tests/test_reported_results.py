"""What a run reports is what it made: targets requested vs achieved, tables of the saved model, measured latency."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import lcpress


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))


X = torch.randn(1, 3, 8, 8)


def test_an_unreachable_target_is_said_once_in_ratios_and_the_summary_shows_what_was_achieved(caplog):
    config = {"tasks": [{"layers": ["2"], "options": {"rank_multiple": 8}, "target": {"cost": "flops", "ratio": 0.05}}],
              "schedule": {"steps": 2, "mu0": 0.1}}
    with caplog.at_level(logging.WARNING):
        result = lcpress.compress(_cnn(), config, lambda m, p, s: None, lambda m: 0.5, example_input=X, progress=False)
    said = [r.getMessage() for r in caplog.records if "out of reach" in r.getMessage()]
    assert len(said) == 1, said  # once, not once per LC step
    assert "flops ≤ 5.0% of dense is out of reach: the cheapest forms of the group's layers reach 33.3%" in said[0]
    # the cheapest form is rank 8 in the spatial shape, (16·3·8 + 8·16·3) / (16·16·9); channel would be 55.6%
    assert "at batch 1" in said[0] and "rank_multiple" in said[0]
    assert "tasks[0] target: flops ≤ 5.0% of dense; achieved 33.3% (out of reach: the cheapest forms)" in \
        result.summary()


def test_the_report_shows_requested_and_achieved(tmp_path):
    config = {"tasks": [{"layers": ["5"], "target": {"cost": "params", "ratio": 0.5}}], "schedule": {"steps": 0},
              "output_dir": str(tmp_path / "run")}
    result = lcpress.compress(_cnn(), config, example_input=X, progress=False)
    text = result.write_report(plots=False).markdown.read_text()
    assert "tasks[0] target: params ≤ 50.0% of dense; achieved" in text


def test_a_form_kept_dense_is_priced_dense_and_said_so(caplog):
    config = {"tasks": [{"layers": ["5"], "scheme": "additive",
                         "options": {"parts": [{"scheme": "low_rank", "options": {"rank": 8}},
                                               {"scheme": "prune", "options": {"keep_fraction": 0.02}}]}}],
              "schedule": {"steps": 0}}  # cost: flops (default): rank 8 + sparse costs more FLOPs than dense
    with caplog.at_level(logging.WARNING):
        result = lcpress.compress(_cnn(), config, example_input=X, progress=False)
    row = result.layers.set_index("layer").loc["5"]
    assert row["form"] == "rank 8 + 1,311 nonzeros → kept dense" and not row["realized"]
    for cost in ("params", "flops", "storage"):
        assert row[f"{cost}_after"] == row[f"{cost}_before"]  # what the saved model holds
    assert "costs more than dense under flops" in caplog.text and "cost: storage" in caplog.text
    assert type(result.model[5]) is nn.Linear


def test_a_shared_task_is_realized_layer_by_layer_so_the_file_is_small(tmp_path):
    config = {"tasks": [{"layers": ["5", "7"], "scheme": "prune", "options": {"keep_fraction": 0.05},
                         "shared": True, "cost": "storage"}], "schedule": {"steps": 0}}
    model = _cnn()
    dense_bytes = lcpress.save(model, tmp_path / "dense.safetensors").stat().st_size
    result = lcpress.compress(model, config, example_input=X, progress=False)
    assert all(isinstance(model[i], lcpress.nn.DecodedLinear) for i in (5, 7))
    rows = result.layers.set_index("layer")
    assert rows.loc[["5", "7"], "realized"].all()
    assert rows.loc["5", "storage_after"] < 0.2 * rows.loc["5", "storage_before"]
    path = result.save(tmp_path / "model.safetensors")
    assert path.stat().st_size < 0.6 * dense_bytes  # the convolutions stay dense; the Linear layers shrink
    loaded = lcpress.load(path)
    torch.testing.assert_close(loaded(X), model(X))


@pytest.mark.parametrize("shared_scheme", [{"scheme": "quantize", "options": {"k": 4}},
                                           {"scheme": "sequential", "options": {"parts": [
                                               {"scheme": "prune", "options": {"keep_fraction": 0.1}},
                                               {"scheme": "quantize", "options": {"k": 2, "zeros": "keep"}}]}}])
def test_split_states_decompress_to_the_shared_delta(shared_scheme):
    config = {"tasks": [{"layers": ["5", "7"], "shared": True, **shared_scheme}], "schedule": {"steps": 0}}
    model = _cnn()
    reference = _cnn()
    result = lcpress.compress(model, config, example_input=X, progress=False)
    assert result.max_abs_error < 1e-5  # the realized layers compute exactly what Δ(θ) does
    assert all(r.realized for r in result.records)
    assert not torch.equal(model(X), reference(X))


def test_a_measured_target_reports_the_whole_model_measured_dense_and_compressed(tmp_path, monkeypatch):
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path))
    config = {"tasks": [{"layers": ["5"], "target": {"cost": "cpu_latency", "ratio": 0.5}}],
              "cost_models": {"cpu_latency": {"min_run_time": 0.01, "threads": 1}}, "schedule": {"steps": 0}}
    result = lcpress.compress(_cnn(), config, example_input=X, progress=False)
    assert len(result.measured) == 1
    line = result.measured[0]
    assert line.startswith("measured cpu_latency of the whole model at batch 1: dense ") and "% of dense)" in line
    assert line in result.summary()


def test_profile_prints_the_lowest_reachable_ratio(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path))
    config = {"tasks": [{"layers": ["5"], "target": {"cost": "cpu_latency", "ratio": 0.5}}],
              "cost_models": {"cpu_latency": {"min_run_time": 0.01, "threads": 1}}, "schedule": {"steps": 0}}
    profile = lcpress.profile_costs(_cnn(), config, X, progress=False)
    ratios = profile.lowest_ratios()
    # a measured ratio: on a loaded machine the cheapest rank-8 factorization may time no faster than dense
    assert set(ratios) == {"cpu_latency"} and 0 < ratios["cpu_latency"] <= 1
    assert f"cpu_latency: the cheapest forms reach {ratios['cpu_latency']:.1%} of the dense cost" in profile.summary()

