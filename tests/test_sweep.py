"""Trade-off sweeps: one run per target, the baseline, the curve, reuse of finished runs."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

import lcpress
from lcpress import ConfigError
from lcpress.cli import main
from lcpress.core.costmodel import CostModel
from lcpress.runs.demo import digits_loaders
from lcpress.core.forms import Dense, LayerSpec, LowRank
from lcpress.core.registry import get_registry
from lcpress.runs.sweep import sweep, uniform_rank, with_target

CONFIG = {
    "tasks": [{"layers": ["1", "3"], "options": {"rank_multiple": 4}, "target": {"cost": "flops", "ratio": 0.5}}],
    "schedule": {"mu0": 1e-2, "factor": 1.5, "steps": 1},
    "train": {"epochs": 1, "lr": 0.02},
}


def _flops() -> CostModel:
    return get_registry().cost_model("flops")()


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.99])
def test_uniform_rank_is_the_largest_rank_within_the_ratio(ratio):
    spec = LayerSpec("conv2d", 16, 32, (1, 16, 8, 8), kernel_size=(3, 3), padding=(1, 1))
    flops = _flops()
    rank = uniform_rank(spec, flops, ratio)
    dense = flops.cost(spec, Dense())
    if flops.cost(spec, LowRank(1)) <= ratio * dense:
        assert flops.cost(spec, LowRank(rank)) <= ratio * dense
    assert rank == 1 or flops.cost(spec, LowRank(rank)) <= ratio * dense
    if rank < 32:
        assert flops.cost(spec, LowRank(rank + 1)) > ratio * dense


def test_sweep_runs_every_target_and_the_baseline(dense_mlp, tmp_path, monkeypatch):
    loaders = digits_loaders(64, 0)
    config = dict(CONFIG, output_dir=str(tmp_path / "sweep"))
    before = copy.deepcopy(dense_mlp.state_dict())
    result = sweep(dense_mlp, config, [0.3, 0.6], loaders=loaders, baseline=True, progress=False, reports=False)
    for key, value in dense_mlp.state_dict().items():  # the dense model is left alone
        assert torch.equal(value, before[key])
    points = result.points
    assert list(points["method"]) == ["dense", "lc", "baseline", "lc", "baseline"]
    assert list(points["target"]) == [1.0, 0.3, 0.3, 0.6, 0.6]
    assert points.loc[0, "flops_ratio"] == 1.0 and points["metric"].notna().all()
    for _, row in points.iloc[1:].iterrows():
        run = tmp_path / "sweep" / row["run"]
        assert (run / "model.safetensors").is_file()
        layers = pd.read_csv(run / "layers.csv", dtype={"layer": str}).set_index("layer").loc[["1", "3"]]
        assert layers["flops_after"].sum() <= row["target"] * layers["flops_before"].sum() + 1e-9
    # the baseline keeps the same cost ratio in every layer: the largest rank within it
    baseline = pd.read_csv(tmp_path / "sweep" / "baseline-0.3" / "layers.csv", dtype={"layer": str})
    spec = LayerSpec("linear", 64, 64, (1, 64))
    assert set(baseline.loc[baseline["layer"].isin(["1", "3"]), "form_rank"]) == {uniform_rank(spec, _flops(), 0.3)}
    info = lcpress.io.rundir.RunDirectory(tmp_path / "sweep" / "baseline-0.3").info()
    assert info["fine_tuned"] and info["fine_tune_passes"] == 1 and info["metric"] == points.loc[2, "metric"]
    assert points["pareto"].dtype == bool and points["pareto"].any()
    for name in ("sweep.csv", "sweep.md", "sweep.html", "sweep.png"):
        assert (tmp_path / "sweep" / name).is_file()
    assert "| lc | 0.3 |" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert repr(result).startswith("SweepResult(points=5 (1 dense, 2 lc, 2 baseline)") and "\n" not in repr(result)

    # a second sweep reuses every finished run of the same config
    def no_run(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr("lcpress.runs.sweep.compress", no_run)
    again = sweep(dense_mlp, config, [0.3, 0.6], loaders=loaders, baseline=True, progress=False, reports=False)
    pd.testing.assert_frame_equal(again.points, points)
    # … also when the config's own sweep section changed (a target added there): its points are not the runs
    changed = dict(config, sweep={"targets": [0.3, 0.6, 0.9], "baseline": True})
    again = sweep(dense_mlp, changed, [0.3, 0.6], loaders=loaders, baseline=True, progress=False, reports=False)
    pd.testing.assert_frame_equal(again.points, points)


def test_a_notebook_sweeps_with_the_functions_it_compresses_with(dense_mlp, tmp_path):
    """sweep(..., train_fn=, eval_fn=, example_input=) as compress takes them; the baseline trains with train_fn too."""
    train, test = digits_loaders(64, 0)
    seen = []

    def train_fn(model, penalty, step):
        seen.append(step.index)
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y) + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def eval_fn(model):
        return lcpress.accuracy(model, test)

    x = next(iter(test))[0][:1]
    config = dict(CONFIG, output_dir=str(tmp_path / "sweep"))
    result = sweep(dense_mlp, config, [0.4], train_fn=train_fn, eval_fn=eval_fn, example_input=x, baseline=True,
                   progress=False, reports=False)
    assert list(result.points["method"]) == ["dense", "lc", "baseline"] and result.points["metric"].notna().all()
    assert seen == [0, 0]  # one L step (LC run), then the baseline's one pass of fine-tuning
    with pytest.raises(ConfigError, match="pass eval_fn=.*or loaders="):
        sweep(dense_mlp, config, [0.4], train_fn=train_fn, example_input=x, progress=False)


def test_a_sweep_writes_into_no_folder_and_over_no_file_of_the_users(dense_mlp, tmp_path):
    from lcpress.errors import RunDirectoryError

    loaders = digits_loaders(64, 0)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.md").write_text("my own sweep notes")
    config = dict(CONFIG, schedule={"steps": 0}, output_dir=str(out))
    with pytest.raises(RunDirectoryError, match=r"holds sweep\.md, which lcpress did not write"):
        sweep(dense_mlp, config, [0.4], loaders=loaders, progress=False, reports=False)
    assert (out / "sweep.md").read_text() == "my own sweep notes" and not any(out.glob("target-*"))
    (out / "sweep.md").unlink()
    point = out / "target-0.4"  # a folder of the user's under a point's name: no run goes into it without --force
    point.mkdir()
    (point / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="is a folder lcpress did not create"):
        sweep(dense_mlp, config, [0.4], loaders=loaders, progress=False, reports=False)
    assert sorted(p.name for p in point.iterdir()) == ["notes.txt"]
    point.rename(tmp_path / "kept")
    first = sweep(dense_mlp, config, [0.4], loaders=loaders, progress=False, reports=False)
    again = sweep(dense_mlp, config, [0.4], loaders=loaders, progress=False, reports=False)  # its own tables
    assert first.files["markdown"] == again.files["markdown"] and (out / "sweep.csv").exists()


def test_sweep_needs_a_target_and_targets(dense_mlp, tmp_path):
    loaders = digits_loaders(64, 0)
    no_target = {"tasks": [{"layers": ["1"], "options": {"rank": 8}}], "output_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="no group has a 'target'"):
        sweep(dense_mlp, no_target, [0.5], loaders=loaders, progress=False)
    with pytest.raises(ConfigError, match="sweep.targets: give the target ratios"):
        sweep(dense_mlp, dict(CONFIG, output_dir=str(tmp_path)), loaders=loaders, progress=False)
    with pytest.raises(ConfigError, match="output_dir"):
        sweep(dense_mlp, CONFIG, [0.5], loaders=loaders, progress=False)


def test_with_target_replaces_ratios_and_values(tmp_path):
    config = lcpress.load_config({"tasks": [{"layers": ["a"], "target": {"cost": "params", "value": 100}},
                                            {"layers": ["b"], "alpha": 1e-3}]})
    changed = with_target(config, 0.25, tmp_path)
    assert changed.tasks[0].target.ratio == 0.25 and changed.tasks[0].target.value is None
    assert changed.tasks[0].target.cost == "params" and changed.tasks[1].target is None
    assert changed.output_dir == str(tmp_path)


def test_sweep_cli_checks_targets(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {builtin: digits_cnn}\ndata: {builtin: digits}\ntasks:\n  - layers: ['*']\n")
    with pytest.raises(SystemExit):
        main(["sweep", str(cfg), "--targets", "0.2,1.5"])
    assert "target ratios must be in (0, 1]" in capsys.readouterr().err


def test_the_baseline_trains_at_finetune_lr_where_one_is_set(dense_mlp, tmp_path):
    """The baseline is all fine-tuning of thin layers: it takes finetune.lr, and LC's passes, when the user sets it."""
    from lcpress.runs.compress import finetune_train
    from lcpress.runs.sweep import baseline_config

    for finetune, lr in (({"steps": 1}, 0.02), ({"steps": 1, "lr": 0.004}, 0.004)):
        config = lcpress.load_config({**CONFIG, "finetune": finetune})
        cfg = baseline_config(dense_mlp, config, 0.5, torch.zeros(1, 64), tmp_path)
        assert cfg.schedule.steps == 0 and cfg.finetune.steps == 2  # one LC step + one fine-tuning pass
        assert finetune_train(cfg).lr == pytest.approx(lr)


def test_sweep_under_torchrun_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from lcpress.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["sweep", str(tmp_path / "any.yaml"), "--targets", "0.5"]) == 2
    assert "lcpress sweep runs in one process: start it without torchrun" in capsys.readouterr().err
