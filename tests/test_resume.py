"""Resumable runs: an interrupted run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import lcpress
from lcpress import CheckpointError, RunDirectoryError
from lcpress.cli import main
from lcpress.runs.demo import digits_cnn, digits_loaders
from lcpress.runs.training import SupervisedTrainer

CONFIG = {
    "tasks": [{"layers": ["2", "5", "8"], "options": {"rank_multiple": 8}, "target": {"cost": "flops", "ratio": 0.4}}],
    "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": 4},
    "train": {"epochs": 1, "lr": 0.02, "optimizer": "sgd", "momentum": 0.9},
    "seed": 3,
}


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    model = digits_cnn()
    train, _ = digits_loaders(64, 0)
    from lcpress.runs.demo import train_dense

    train_dense(model, train, epochs=3, progress=False)
    return model


def _run(dense, out, resume=False):
    model = copy.deepcopy(dense)
    loaders = digits_loaders(64, 0)
    return lcpress.compress(model, dict(CONFIG, output_dir=str(out)), loaders=loaders, resume=resume, progress=False)


def test_resumed_run_equals_uninterrupted_run(dense, tmp_path, power_cut):
    full = _run(dense, tmp_path / "full")
    with power_cut(at=2):  # dies in the third L step
        _run(dense, tmp_path / "cut")
    checkpoint = lcpress.io.files.read_file(tmp_path / "cut" / "checkpoint.safetensors")[1]
    assert checkpoint["engine"]["next_step"] == 3  # DC + two LC steps were saved
    resumed = _run(dense, tmp_path / "cut", resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    columns = [c for c in full.history.columns if c != "seconds"]
    assert full.history[columns].equals(resumed.history[columns])


def test_resuming_with_another_thread_count_says_it_will_not_be_bit_identical(dense, tmp_path, power_cut, caplog):
    with power_cut(at=1):
        _run(dense, tmp_path / "cut")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level("WARNING", logger="lcpress"):
            _run(dense, tmp_path / "cut", resume=True)
    finally:
        torch.set_num_threads(threads)
    assert f"checkpointed with {threads} torch threads and resumes with {threads + 1}" in caplog.text


def test_a_failing_eval_fn_passes_through_after_naming_the_intact_checkpoint(dense, tmp_path, caplog):
    """A notebook user's own exception reaches them unchanged, with one line saying the run can continue."""
    calls = []

    def eval_fn(model):
        calls.append(1)
        if len(calls) == 4:  # dense, step 0, step 1, then step 2
            raise ZeroDivisionError("a bug in my metric")
        return 0.5

    config = dict(CONFIG, output_dir=str(tmp_path / "run"))
    train, _ = digits_loaders(64, 0)
    with pytest.raises(ZeroDivisionError, match="a bug in my metric"), caplog.at_level("ERROR", logger="lcpress"):
        lcpress.compress(copy.deepcopy(dense), config, SupervisedTrainer(train, lcpress.config.TrainConfig(**CONFIG["train"])), eval_fn,
                         calibration=train, progress=False)
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "LC step 2 stopped (ZeroDivisionError); the checkpoint after LC step 1 is intact: continue the run with "
        "resume=True (CLI: lcpress compress --resume)"]
    resumed = lcpress.compress(copy.deepcopy(dense), config, SupervisedTrainer(train, lcpress.config.TrainConfig(**CONFIG["train"])),
                               lambda model: 0.5, calibration=train, resume=True, progress=False)
    assert list(resumed.history["step"]) == [0, 1, 2, 3, 4]


def test_resuming_the_interrupted_model_object_keeps_the_first_dense_metric_and_its_mode(dense, tmp_path):
    """A notebook: Ctrl-C mid-run leaves the model object at the last L step; resuming on it must not re-measure it."""
    model = copy.deepcopy(dense).eval()
    loaders = digits_loaders(64, 0)
    config = dict(CONFIG, output_dir=str(tmp_path / "run"))
    trainer = SupervisedTrainer(loaders[0], lcpress.config.TrainConfig(**CONFIG["train"]))
    steps = []

    def train_fn(model, penalty, step):
        steps.append(step.index)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return trainer(model, penalty, step)

    with pytest.raises(KeyboardInterrupt):
        lcpress.compress(model, config, train_fn, loaders=loaders, progress=False)
    assert not model.training  # it came in eval mode and goes back in it, even after the interrupt
    first = lcpress.io.rundir.RunDirectory(tmp_path / "run").info()["dense_metric"]
    resumed = lcpress.compress(model, config, trainer, loaders=loaders, resume=True, progress=False)
    assert resumed.dense_metric == first
    assert lcpress.io.rundir.RunDirectory(tmp_path / "run").info()["dense_metric"] == first


def test_finished_run_is_not_overwritten_without_force(dense, tmp_path):
    _run(dense, tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RunDirectoryError, match="holds a finished run.*--force"):
        _run(dense, tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    config = dict(CONFIG, output_dir=str(tmp_path / "run"))
    lcpress.compress(copy.deepcopy(dense), config, loaders=digits_loaders(64, 0), force=True, progress=False)


def test_unfinished_run_needs_resume_or_force(dense, tmp_path, power_cut):
    with power_cut(at=1):
        _run(dense, tmp_path / "run")
    with pytest.raises(RunDirectoryError, match=r"holds an unfinished run; pass resume=True to continue it \(CLI: --resume\)"):
        _run(dense, tmp_path / "run")
    with pytest.raises(RunDirectoryError, match="holds no checkpoint"):
        _run(dense, tmp_path / "empty", resume=True)


def test_corrupted_checkpoint_is_reported_and_kept(dense, tmp_path, power_cut):
    with power_cut(at=1):
        _run(dense, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint .* is corrupted"):
        _run(dense, tmp_path / "run", resume=True)
    assert ckpt.read_bytes() == bytes(data)


def test_resume_with_another_config_is_refused(dense, tmp_path, power_cut):
    with power_cut(at=1):
        _run(dense, tmp_path / "run")
    other = dict(CONFIG, tasks=[dict(CONFIG["tasks"][0], layers=["2", "5"])], output_dir=str(tmp_path / "run"))
    with pytest.raises(lcpress.LcpressError, match=r"holds a run of another config.*Changed: tasks\[0\]\.layers"):
        lcpress.compress(copy.deepcopy(dense), other, loaders=digits_loaders(64, 0), resume=True, progress=False)


def test_cli_resume(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {builtin: digits_cnn, pretrain_epochs: 2}\ndata: {builtin: digits}\n"
        "tasks:\n  - layers: ['5', '8']\n    options: {rank: 8}\n"
        "schedule: {steps: 3, mu0: 0.03}\ntrain: {epochs: 1}\n"
    )
    assert main(["compress", str(cfg), "--quiet", "--output-dir", str(tmp_path / "full")]) == 0
    original = SupervisedTrainer.__call__

    def interrupted(self, model, penalty, step):
        if step.index == 1 and "L step" in self.description:
            raise KeyboardInterrupt
        return original(self, model, penalty, step)

    monkeypatch.setattr(SupervisedTrainer, "__call__", interrupted)
    assert main(["compress", str(cfg), "--quiet", "--output-dir", str(tmp_path / "cut")]) == 130
    monkeypatch.undo()
    assert main(["compress", str(cfg), "--quiet", "--output-dir", str(tmp_path / "cut")]) == 2  # needs --resume
    assert main(["compress", str(cfg), "--quiet", "--output-dir", str(tmp_path / "cut"), "--resume"]) == 0
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_into_a_model_of_other_shapes_names_the_first_difference(tmp_path):
    import torch.nn as nn

    def mlp(hidden):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    x = torch.randn(32, 20)
    steps = []

    def train_fn(model, penalty, step):
        steps.append(step.index)
        if len(steps) == 2:
            raise KeyboardInterrupt
        loss = model(x).square().mean() + penalty()
        loss.backward()

    config = {"tasks": [{"layers": ["0"], "options": {"rank": 4}}], "schedule": {"steps": 3, "mu0": 0.1},
              "output_dir": str(tmp_path / "run")}
    with pytest.raises(KeyboardInterrupt):
        lcpress.compress(mlp(64), config, train_fn, example_input=x[:1], progress=False)
    with pytest.raises(lcpress.LcpressError, match=r"another architecture \('0.bias' is \(64,\) there, \(128,\) here\)"):
        lcpress.compress(mlp(128), config, train_fn, example_input=x[:1], resume=True, progress=False)
