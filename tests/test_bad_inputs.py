"""The catalogue of bad inputs: each gets one clear error saying what to fix, and nothing the user had is lost.

One test per case, grouped as docs/guarantees.md groups them: run directories,
resuming, code that could run from a run directory, hostile model files,
plugin faults and NaN, config edges, file permissions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import lcpress
from lcpress import CheckpointError, ConfigError, CStepError, LcpressError, PluginError, RunDirectoryError
from lcpress.cli import main
from lcpress.core.registry import reset_registry
from lcpress.io.files import write_file

X = torch.randn(4, 12)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 12, generator=g)
    ds = torch.utils.data.TensorDataset(x, x[:, :4].argmax(1))
    return (torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)),
            torch.utils.data.DataLoader(ds, batch_size=64))


def _config(out, **over):
    config = {"tasks": [{"layers": ["0"], "target": {"cost": "params", "ratio": 0.5}}],
              "schedule": {"steps": 2, "mu0": 0.01, "factor": 2.0}, "output_dir": str(out)}
    config.update(over)
    return config


def _compress(out, **kw):
    config = _config(out, **kw.pop("config", {}))
    return lcpress.compress(_net(), config, loaders=_data(), progress=False, **kw)


# ------------------------------------------------------------------ run directories
def test_a_folder_lcpress_did_not_create_is_not_written_into(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "history.csv").write_text("my own history\n")
    (out / "notes.txt").write_text("mine too")
    # history.csv is a name a run writes, so force would not help either: that is what is said
    with pytest.raises(RunDirectoryError, match=r"holds history.csv, which lcpress did not write.*force=True \(CLI: "
                                                r"--force\) never replaces"):
        _compress(out)
    assert (out / "history.csv").read_text() == "my own history\n"
    (out / "history.csv").unlink()
    with pytest.raises(RunDirectoryError, match=r"a folder lcpress did not create and it holds files \(notes.txt\).*"
                                                r"pass force=True \(CLI: --force\) to add a run"):
        _compress(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resuming_a_run_that_is_not_there_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RunDirectoryError, match=r"holds no checkpoint to resume from; start the run without "
                                                r"resume=True"):
        _compress(tmp_path / "typo", resume=True)
    assert not (tmp_path / "typo").exists()


def test_force_never_replaces_a_file_lcpress_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.safetensors").write_text("not lcpress's")
    with pytest.raises(RunDirectoryError, match="holds model.safetensors, which lcpress did not write"):
        _compress(out, force=True)
    assert (out / "model.safetensors").read_text() == "not lcpress's"


def test_force_adds_a_run_beside_unrelated_files_and_keeps_them(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    _compress(out, force=True)
    _compress(out, force=True)  # replacing lcpress's own run there: the notes stay
    assert (out / "notes.txt").read_text() == "keep me" and (out / "model.safetensors").is_file()


def test_a_second_run_into_a_held_directory_stops_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = lcpress.io.rundir.RunDirectory(out)
    holder.acquire()
    try:
        with pytest.raises(RunDirectoryError, match=rf"in use by another lcpress run \(process {os.getpid()} on "):
            _compress(out)
        with pytest.raises(RunDirectoryError, match="in use by another lcpress run"):
            _compress(out, resume=True)
    finally:
        holder.release()
    _compress(out)  # released: the run goes ahead
    assert not (out / "run.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "run.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x"}))
    _compress(out)
    assert (out / "model.safetensors").is_file()


def test_a_run_that_found_the_same_stale_lock_late_leaves_the_winners_lock_in_place(tmp_path):
    """Two runs see one dead process's lock; the first takes over, the second must not remove the fresh lock."""
    from lcpress.io.rundir import RunDirectory

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "x"}
    winner = {"pid": os.getppid(), "host": socket.gethostname(), "since": "now"}  # a live process
    (out / "run.lock").write_text(json.dumps(winner))  # the first run already took over
    RunDirectory(out)._take_over(stale)  # the second, acting on the stale record it read before
    assert json.loads((out / "run.lock").read_text()) == winner and sorted(p.name for p in out.iterdir()) == ["run.lock"]
    with pytest.raises(RunDirectoryError, match="in use by another lcpress run"):
        RunDirectory(out).acquire()


def test_an_output_dir_that_is_a_file_or_under_one_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file, not a folder"):
        _compress(target)
    with pytest.raises(RunDirectoryError, match="lies under .*file.*, which is a file"):
        _compress(target / "run")
    assert target.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(RunDirectoryError, match="(not writable|cannot create)"):
            _compress(folder / "run")
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------ resuming
@pytest.mark.parametrize("change, listed", [
    ({"tasks": [{"layers": ["0"], "target": {"cost": "params", "ratio": 0.3}}]}, "tasks[0].target.ratio: 0.5 → 0.3"),
    ({"train": {"lr": 0.5}}, "train.lr: 0.01 → 0.5"),
    ({"schedule": {"steps": 2, "mu0": 0.02, "factor": 2.0}}, "schedule.mu0: 0.01 → 0.02"),
    ({"seed": 3}, "seed: 0 → 3"),
    ({"schedule": {"steps": 3, "mu0": 0.01, "factor": 2.0}}, "schedule.steps: 2 → 3"),
])
def test_resume_refuses_a_changed_config_listing_the_keys(tmp_path, power_cut, change, listed):
    out = tmp_path / "run"
    _interrupted(out, power_cut)
    with pytest.raises(RunDirectoryError, match="holds a run of another config") as error:
        _compress(out, resume=True, config=change)
    assert listed in str(error.value)
    _compress(out, resume=True)  # with the config it started with, it finishes


def _interrupted(out, power_cut):
    with power_cut(at=1):  # during LC step 2: the checkpoint after step 1 stays
        _compress(out)


def test_a_finished_run_is_extended_by_more_steps_and_says_so(tmp_path):
    out = tmp_path / "run"
    _compress(out)
    more = {"schedule": {"steps": 4, "mu0": 0.01, "factor": 2.0}}
    with pytest.raises(RunDirectoryError, match="holds a finished run; nothing to resume"):
        _compress(out, resume=True, config=more)
    result = _compress(out, resume=True, extend=True, config=more)
    assert list(result.history["step"]) == [0, 1, 2, 3, 4]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["extensions"][0]["from_steps"] == 2
    assert info["extensions"][0]["to_steps"] == 4 and info["config"]["schedule"]["steps"] == 4
    with pytest.raises(RunDirectoryError, match="set schedule.steps above the run's 4"):
        _compress(out, resume=True, extend=True, config=more)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_finished_runs_lost_model_file_is_realized_again_by_resume(tmp_path, damage):
    out = tmp_path / "run"
    first = _compress(out)
    model_file = out / "model.safetensors"
    expected = lcpress.load(model_file, model=_net())
    if damage == "delete":
        model_file.unlink()
    else:
        model_file.write_bytes(model_file.read_bytes()[:100])
    again = _compress(out, resume=True)  # no training: the checkpoint holds the finished run
    assert list(again.history["step"]) == list(first.history["step"])
    x = torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(lcpress.load(model_file, model=_net())(x), expected(x), rtol=0, atol=0)


def test_an_interrupted_extension_resumes_with_the_same_command(tmp_path, power_cut):
    out = tmp_path / "run"
    _compress(out)
    more = {"schedule": {"steps": 4, "mu0": 0.01, "factor": 2.0}}
    with power_cut(at=2):  # during LC step 3, the extension's first
        _compress(out, resume=True, extend=True, config=more)
    result = _compress(out, resume=True, extend=True, config=more)  # it said "set steps above the run's 4 (now 4)"
    assert list(result.history["step"]) == [0, 1, 2, 3, 4]
    assert len(json.loads((out / "run.json").read_text())["extensions"]) == 1


def test_a_run_whose_run_json_is_lost_is_named_as_lcpress_run(tmp_path, power_cut):
    out = tmp_path / "run"
    _interrupted(out, power_cut)
    (out / "run.json").unlink()
    with pytest.raises(RunDirectoryError, match=r"holds an lcpress run whose run.json is missing .*checkpoint records"):
        _compress(out, resume=True)


def test_an_extension_refused_for_its_checkpoint_leaves_the_finished_run_as_it_was(tmp_path):
    out = tmp_path / "run"
    _compress(out)
    before = (out / "run.json").read_text()
    checkpoint = out / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # cut short
    more = {"schedule": {"steps": 4, "mu0": 0.01, "factor": 2.0}}
    with pytest.raises(CheckpointError, match="not a readable lcpress file"):
        _compress(out, resume=True, extend=True, config=more)
    assert (out / "run.json").read_text() == before  # still the finished 2-step run (it became "running", 4 steps)


def test_an_extension_of_another_architecture_leaves_the_finished_run_as_it_was(tmp_path):
    out = tmp_path / "run"
    _compress(out)
    before = (out / "run.json").read_text()
    wider = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    more = {"schedule": {"steps": 4, "mu0": 0.01, "factor": 2.0}}
    with pytest.raises(LcpressError, match="another architecture"):
        lcpress.compress(wider, _config(out, **more), loaders=_data(), resume=True, extend=True, progress=False)
    assert (out / "run.json").read_text() == before


def test_a_checkpoint_another_config_wrote_is_not_resumed(tmp_path, power_cut):
    out, other = tmp_path / "run", tmp_path / "other-lr"
    _interrupted(out, power_cut)
    _compress(other, config={"train": {"lr": 0.5}})  # its checkpoint copied over this run's (a restored backup)
    (out / "checkpoint.safetensors").write_bytes((other / "checkpoint.safetensors").read_bytes())
    with pytest.raises(RunDirectoryError, match=r"written by a run of another config .*train\.lr: 0\.5 → 0\.01"):
        _compress(out, resume=True)


def test_half_written_copies_a_killed_run_left_are_removed_when_the_run_goes_on(tmp_path, power_cut):
    out = tmp_path / "run"
    _interrupted(out, power_cut)
    stale = out / ".checkpoint.safetensors.ab12cd34.tmp"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"\0" * 1024)
    mine = out / "notes.tmp"
    mine.write_text("the user's")
    _compress(out, resume=True)
    assert not stale.exists() and mine.exists()


def test_a_moved_project_resumes(tmp_path, monkeypatch, power_cut):
    """Config file and run folder moved together: base_dir changed, nothing the user could put back."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text(yaml.safe_dump(_config("runs/a")))
    monkeypatch.chdir(tmp_path)
    with power_cut(at=1):
        lcpress.compress(_net(), project / "config.yaml", loaders=_data(), progress=False)
    project.rename(tmp_path / "moved")
    result = lcpress.compress(_net(), tmp_path / "moved" / "config.yaml", loaders=_data(), resume=True, progress=False)
    assert list(result.history["step"]) == [0, 1, 2]


def test_a_run_stopped_while_fine_tuning_names_its_checkpoint_and_resumes_from_the_dense_model(tmp_path, caplog):
    """The model object is realized by then: resuming with it is refused with the fix, a fresh copy resumes."""
    train, _ = _data()

    buggy = [True]

    def train_fn(model, penalty, step):
        if step.index >= 2 and buggy[0]:  # the first fine-tuning pass (after LC steps 1 and 2)
            raise RuntimeError("a bug in my fine-tuning")
        for x, y in train:
            model.zero_grad()
            (torch.nn.functional.cross_entropy(model(x), y) + penalty()).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad

    config = _config(tmp_path / "run", finetune={"steps": 1}, tasks=[
        {"layers": ["0"], "options": {"rank_multiple": 1}, "target": {"cost": "params", "ratio": 0.5}}])
    model = _net()
    with pytest.raises(RuntimeError, match="a bug in my fine-tuning"), caplog.at_level("ERROR", logger="lcpress"):
        lcpress.compress(model, config, train_fn, example_input=torch.randn(1, 12), progress=False)
    assert "the checkpoint after LC step 2 is intact" in caplog.text
    with pytest.raises(ConfigError, match=r"'0' was realized by an lcpress run .* pass the dense model"):
        lcpress.compress(model, config, train_fn, example_input=torch.randn(1, 12), resume=True, progress=False)
    buggy[0] = False
    result = lcpress.compress(_net(), config, train_fn, example_input=torch.randn(1, 12), resume=True, progress=False)
    assert result.records[0].realized and result.metric_before_finetune is None and len(result.history) == 3


# ------------------------------------------------------------------ nothing runs from a run directory
def test_a_run_directory_from_elsewhere_runs_no_code_when_exported_from_inside_it(tmp_path):
    run = tmp_path / "received"
    run.mkdir()
    marker = tmp_path / "executed"
    (run / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef make():\n    return None\n")
    (run / "run.json").write_text(json.dumps({"format": "lcpress-run", "status": "finished",
                                              "config": {"model": {"factory": "evil:make"}, "tasks": []}}))
    write_file(run / "model.safetensors", {"w": torch.zeros(2)},
               {"format": "lcpress-model", "format_version": 1, "lcpress_version": "0", "torch_version": "0",
                "layers": [], "architecture": None, "not_rebuildable": ["Evil"], "config": {"model": {
                    "factory": "evil:make"}}})
    done = subprocess.run([sys.executable, "-m", "lcpress", "export", ".", "--onnx", "out.onnx"], cwd=run,
                          capture_output=True, text=True, env={**os.environ, "LCPRESS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 2 and "--config" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("module", ["yaml", "pandas", "safetensors"])
def test_python_m_lcpress_imports_nothing_from_the_folder_it_is_started_in(tmp_path, module):
    """The package's own imports run before its __main__: a `yaml.py` there must not be the yaml imported."""
    marker = tmp_path / "executed"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    done = subprocess.run([sys.executable, "-m", "lcpress", "plugins"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "LCPRESS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_factories_and_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mynet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def model():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
        def data():
            x = torch.randn(32, 12)
            ds = torch.utils.data.TensorDataset(x, x[:, :4].argmax(1))
            return torch.utils.data.DataLoader(ds, batch_size=16), torch.utils.data.DataLoader(ds, batch_size=32)
    """))
    (project / "job.yaml").write_text(yaml.safe_dump({
        "model": {"factory": "mynet:model"}, "data": {"factory": "mynet:data"},
        "tasks": [{"layers": ["0"], "options": {"rank": 4}}], "schedule": {"steps": 0}, "output_dir": "runs/a"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compress", str(project / "job.yaml"), "--quiet"]) == 0
    assert (project / "runs" / "a" / "model.safetensors").is_file() and not (elsewhere / "runs").exists()
    assert "mynet" in sys.modules and str(project) not in sys.path  # imported from there, and only for that


# ------------------------------------------------------------------ hostile model files
def _crafted(path, architecture=None, tensors=None, **manifest):
    """A model file as an attacker would write it: any manifest, with a valid checksum (it is no signature)."""
    doc = {"format": "lcpress-model", "format_version": 1, "lcpress_version": "0", "torch_version": "0",
           "layers": [], "architecture": architecture, "not_rebuildable": [], "config": None}
    doc.update(manifest)
    write_file(path, tensors if tensors is not None else {"weight": torch.zeros(2, 2)}, doc)
    return path


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read this process's memory")
def test_a_file_claiming_a_huge_layer_allocates_nothing(tmp_path):
    huge = {"type": "Linear", "args": {"in_features": 10**7, "out_features": 10**7, "bias": False}, "children": []}
    path = _crafted(tmp_path / "huge.safetensors", huge)
    before = _rss_mb()
    with pytest.raises(CheckpointError, match=r"tensor 'weight' is stored as \(2, 2\).*holds \(10000000, 10000000\)"):
        lcpress.load(path)
    assert _rss_mb() - before < 50


def test_a_deeply_nested_file_is_refused_without_recursion(tmp_path):
    node = {"type": "Sequential", "args": {}, "children": []}
    root = node
    for _ in range(100):
        child = {"type": "Sequential", "args": {}, "children": []}
        node["children"].append(["0", child])
        node = child
    path = _crafted(tmp_path / "deep.safetensors", root)
    with pytest.raises(CheckpointError, match="nested deeper than 64 levels"):
        lcpress.load(path)
    deeper = tmp_path / "deeper.safetensors"  # nesting no JSON parser follows: written by hand, not by json.dumps
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                         "__metadata__": {"lcpress": "[" * 100_000 + "]" * 100_000}}).encode()
    deeper.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(CheckpointError, match="deeper.safetensors' is not a readable lcpress file"):
        lcpress.load(deeper)


@pytest.mark.parametrize("manifest, field", [
    ({"layers": "x"}, "manifest field layers: expected list"),
    ({"layers": [{"name": "0", "weight_shape": "abc"}]}, r"layers\[0\].weight_shape: expected list"),
    ({"layers": [{"name": 3}]}, r"layers\[0\].name: expected str"),
    ({"architecture": {"type": "Sequential", "args": {}, "children": 5}}, "architecture.children: expected list"),
    ({"architecture": {"type": "Linear", "args": {"in_features": {"a": 1}}}}, r"architecture.args.in_features"),
    ({"format_version": "1"}, "format_version: expected int"),
    ({"architecture": {"type": "Pickle", "args": {}, "children": []}}, "unknown type 'Pickle'"),
])
def test_wrong_manifest_types_name_the_file_and_the_field(tmp_path, capsys, manifest, field):
    path = _crafted(tmp_path / "bad.safetensors", **manifest)
    with pytest.raises(CheckpointError, match=field):
        lcpress.load(path, model=_net()) if manifest.get("architecture") is None else lcpress.load(path)
    assert main(["info", str(path)]) in (0, 2)
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err


def test_info_says_no_where_load_refuses(tmp_path, capsys):
    arch = {"type": "Linear", "args": {"in_features": 4, "out_features": 4, "bias": False}, "children": []}
    path = _crafted(tmp_path / "mismatch.safetensors", arch, {"weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="stored as \\(3, 3\\)"):
        lcpress.load(path)
    assert main(["info", str(path)]) == 0
    assert "loads without the model's code: no (" in capsys.readouterr().out


def test_a_random_safetensors_as_model_weights_names_the_file_and_the_key(tmp_path):
    from safetensors.torch import save_file

    from lcpress.runs.sources import load_weights

    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3)}, str(path))
    with pytest.raises(LcpressError, match=r"other.safetensors.*does not fit the model \(missing 0.weight"):
        load_weights(_net(), path)
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(LcpressError, match="junk.safetensors' is not a readable safetensors file"):
        load_weights(_net(), tmp_path / "junk.safetensors")



@pytest.mark.parametrize("wrap, where", [
    (lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3}, "under 'model'"),
    (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "'module.' prefix"),
    (lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}}, "under 'state_dict' without the keys' 'model.'"),
])
def test_weights_saved_by_a_training_script_load_when_their_keys_are_exactly_the_models(tmp_path, caplog, wrap, where):
    from lcpress.runs.sources import load_weights

    trained = _net()
    with torch.no_grad():
        trained[0].weight.add_(1.0)
    torch.save(wrap(trained.state_dict()), tmp_path / "ckpt.pt")
    model = _net()
    with caplog.at_level("INFO", logger="lcpress"):
        load_weights(model, tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert where in caplog.text


def test_a_compressed_model_file_as_model_weights_brings_its_realized_layers(tmp_path):
    """model.weights: runs/x/model.safetensors compresses a compressed model again (CLI chaining)."""
    from lcpress.runs.sources import load_weights

    torch.manual_seed(0)
    compressed, x = _net(), torch.randn(3, 12)
    lcpress.compress(compressed, {"tasks": [{"layers": ["*"], "options": {"rank": 2, "rank_multiple": 1}}],
                                  "schedule": {"steps": 0}}, example_input=x)
    path = lcpress.save(compressed, tmp_path / "model.safetensors")
    model = _net()
    load_weights(model, path)
    assert isinstance(model[0], nn.Sequential) and [r["name"] for r in model.lcpress_layers] == ["0", "2"]
    with torch.no_grad():
        assert torch.equal(model(x), compressed(x))
    with pytest.raises(CheckpointError, match="does not match the saved one"):
        load_weights(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)), path)


def test_a_checkpoint_whose_keys_fit_only_partly_is_still_refused(tmp_path):
    from lcpress.runs.sources import load_weights

    state = {f"module.{k}": v for k, v in _net().state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "ckpt.pt")
    with pytest.raises(LcpressError, match=r"ckpt.pt.*does not fit the model \(missing 0.weight"):
        load_weights(_net(), tmp_path / "ckpt.pt")

# ------------------------------------------------------------------ plugin faults and NaN
class _Broken(lcpress.Scheme):
    name = "broken_delta"
    mode = "nan"

    def compress(self, w, ctx):
        return lcpress.State({"w": w.detach().clone()}, {"step": ctx.step})

    def decompress(self, state):
        w = state.tensors["w"]
        if state.meta["step"] < 1:
            return w
        return w.reshape(-1) if self.mode == "shape" else torch.full_like(w, float("nan"))


class _BrokenPlugin:
    __name__ = "broken_plugin"

    def __init__(self, mode):
        _Broken.mode = mode

    @lcpress.hookimpl
    def lcpress_register_schemes(self, register):
        register(_Broken)


@pytest.mark.parametrize("mode, said", [("nan", "Δ\\(θ\\) holds NaN"), ("shape", "Δ\\(θ\\) has shape \\(288,\\)")])
def test_a_bad_delta_is_caught_at_the_step_it_happens_and_not_checkpointed(tmp_path, plugins, mode, said):
    plugins(_BrokenPlugin(mode))
    out = tmp_path / "run"
    with pytest.raises(CStepError, match=rf"scheme 'broken_delta' \(plugin 'broken_plugin'.*on layer '0' at LC step 1: "
                                         rf"{said}"):
        _compress(out, config={"tasks": [{"layers": ["0"], "scheme": "broken_delta"}]})
    checkpoint = lcpress.io.files.read_file(out / "checkpoint.safetensors")[1]
    assert checkpoint["engine"]["next_step"] == 1  # only the direct compression was kept


def test_a_cost_model_returning_nan_is_named(plugins):
    class NanCost(lcpress.CostModel):
        name = "nan_cost"

        def cost(self, spec, form):
            return float("nan")

    class Plugin:
        __name__ = "nan_cost_plugin"

        @lcpress.hookimpl
        def lcpress_register_cost_models(self, register):
            register(NanCost)

    plugins(Plugin())
    config = {"tasks": [{"layers": ["0"], "cost": "nan_cost", "alpha": 1e-3}], "schedule": {"steps": 0}}
    with pytest.raises(PluginError, match=r"cost model 'nan_cost' \(plugin 'nan_cost_plugin'.*\) pricing layer '0' at LC "
                                          r"step 0: cost\(\) priced the linear 12→24 layer .* at nan; costs must be "
                                          r"finite and non-negative"):
        lcpress.compress(_net(), config, example_input=X, progress=False)


def test_nan_weights_in_the_input_model_are_named_as_such():
    model = _net()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    config = {"tasks": [{"layers": ["*"], "options": {"rank": 2}}], "schedule": {"steps": 0}}
    with pytest.raises(LcpressError, match=r"parameter '2.weight' holds NaN or infinite values before compression") \
            as error:
        lcpress.compress(model, config, example_input=X, progress=False)
    assert "learning rate" not in str(error.value)
    model = _net()
    with torch.no_grad():
        model[0].bias[0] = float("inf")  # outside the compressed layer: still named before training
    with pytest.raises(LcpressError, match=r"parameter '0.bias' holds NaN or infinite values"):
        lcpress.compress(model, {"tasks": [{"layers": ["2"], "options": {"rank": 2}}], "schedule": {"steps": 0}},
                         example_input=X, progress=False)
    with torch.device("meta"):
        unloaded = _net()
    with pytest.raises(LcpressError, match=r"'0.weight' is on the meta device: the model's weights are not loaded"):
        lcpress.compress(unloaded, config, example_input=X, progress=False)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = _config(out, tasks=[{"layers": ["0"], "options": {"rank": 4}}])

    def train_fn(model, penalty, step):
        return float("nan") if step.index == 1 else 0.5

    with pytest.raises(LcpressError, match=r"LC step 2: the L step's training loss is nan \(μ = .*\); the checkpoint "
                                           r"after LC step 1 is intact"):
        lcpress.compress(_net(), config, train_fn, lambda m: 0.0, example_input=X, progress=False)
    assert lcpress.io.files.read_file(out / "checkpoint.safetensors")[1]["engine"]["next_step"] == 2


def test_weights_that_blow_up_with_a_finite_loss_stop_the_run_before_their_checkpoint(tmp_path):
    """A diverging L step (lr·μ > 2 under plain SGD) may keep its loss finite while the weights grow by orders of
    magnitude; Δ(θ) follows them, so nothing else notices. The last good checkpoint must survive."""
    out = tmp_path / "run"
    config = _config(out, tasks=[{"layers": ["0"], "options": {"rank": 4}}])

    def train_fn(model, penalty, step):
        penalty().backward()
        with torch.no_grad():
            model[0].weight.mul_(1e3 if step.index == 1 else 1.0)
        return 0.5

    with pytest.raises(LcpressError, match=r"LC step 2: the L step diverged: the compressed weights' norm grew 1e\+03× "
                                           r"in one step .*\(μ = .*\); the checkpoint after LC step 1 is intact.*lr·μ > 2"):
        lcpress.compress(_net(), config, train_fn, lambda m: 0.0, example_input=X, progress=False)
    assert lcpress.io.files.read_file(out / "checkpoint.safetensors")[1]["engine"]["next_step"] == 2


@pytest.mark.parametrize("statement, said", [("import sys; sys.exit(3)", "called sys.exit\\(\\) while loading"),
                                             ("raise KeyboardInterrupt", "was interrupted while loading")])
def test_a_plugin_that_exits_at_import_is_named(tmp_path, monkeypatch, capsys, statement, said):
    module = f"lcpress_test_exit_{abs(hash(statement)) % 1000}"
    (tmp_path / f"{module}.py").write_text(statement + "\n")
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[lcpress]\n{module} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LCPRESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reset_registry()
    try:
        assert main(["plugins"]) == 2
    finally:
        reset_registry()
    err = capsys.readouterr().err
    assert f"plugin {module!r}" in err and re_search(said, err)


def re_search(pattern, text):
    import re

    return re.search(pattern, text) is not None


# ------------------------------------------------------------------ config edges
@pytest.mark.parametrize("content, said", [
    ("- a\n- b\n", "a config is a mapping of keys .* not a list"),
    ("42\n", "a config is a mapping of keys .* not a int"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file"),
    ("tasks: []\ntasks: [{layers: ['*']}]\n", "key 'tasks' appears twice in one mapping"),
    ("tasks: [\n", "not valid YAML"),
])
def test_a_config_file_of_the_wrong_kind_is_one_clear_line(tmp_path, capsys, content, said):
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["compress", str(path)]) == 2
    err = capsys.readouterr().err
    assert re_search(said, err) and "config.yaml" in err and "Traceback" not in err


def test_a_factory_that_raises_is_named(tmp_path, capsys):
    (tmp_path / "raising.py").write_text("def model():\n    raise ValueError('no such checkpoint')\n")
    (tmp_path / "job.yaml").write_text("model: {factory: 'raising:model'}\ndata: {builtin: digits}\n"
                                       "tasks: [{layers: ['*']}]\noutput_dir: run\n")
    assert main(["compress", str(tmp_path / "job.yaml")]) == 2
    assert "model.factory: 'raising:model' raised ValueError: no such checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("info, said", [([1, 2], "the file should be a JSON object"),
                                        ({"config": "x"}, "config should be a dict"),
                                        ({"config": {"tasks": "abc"}}, "config.tasks should be a list of mappings")])
def test_a_report_on_a_run_json_of_the_wrong_shape_names_the_field(tmp_path, capsys, info, said):
    (tmp_path / "run.json").write_text(json.dumps(info))
    assert main(["report", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly():
    done = subprocess.run(f"{sys.executable} -m lcpress options | head -1", shell=True, capture_output=True, text=True)
    assert done.stdout.startswith("(top level):") and "Traceback" not in done.stderr and "Error" not in done.stderr


# ------------------------------------------------------------------ permissions
def test_files_written_atomically_keep_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        result = _compress(tmp_path / "run")
        files = ["model.safetensors", "checkpoint.safetensors", "run.json", "history.csv", "layers.csv"]
        for name in files:
            assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
        path = result.save(tmp_path / "model.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_model_whose_forward_takes_one_dict_is_told_to_wrap_it():
    class DictIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, batch):
            return self.fc(batch["x"])

    config = {"tasks": [{"layers": ["fc"], "options": {"rank": 2}}], "schedule": {"steps": 0}}
    batch = {"x": torch.randn(1, 8)}
    with pytest.raises(LcpressError, match=r"unexpected keyword argument 'x'.*example_input=\(batch,\)"):
        lcpress.compress(DictIn(), config, example_input=batch)
    result = lcpress.compress(DictIn(), config, example_input=(batch,))
    assert result.records[0].realized


def test_a_damaged_run_json_is_named_as_such_and_nothing_is_replaced(tmp_path):
    out = tmp_path / "run"
    _compress(out)
    (out / "run.json").write_text('{"format": "lcpress-run", "stat')
    before = sorted(p.name for p in out.iterdir())
    for kw in ({"resume": True}, {"force": True}, {}):
        with pytest.raises(RunDirectoryError, match=r"holds a run.json lcpress cannot read \(JSONDecodeError"):
            _compress(out, **kw)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_pickled_module_as_model_weights_is_one_line_that_never_advises_unpickling(tmp_path):
    from lcpress.runs.sources import load_weights

    torch.save(nn.Linear(3, 4), tmp_path / "full.pt")
    with pytest.raises(LcpressError, match=r"is a pickled object \(it holds a torch.nn.modules.linear.Linear\), not a "
                                           r"state dict.*save model.state_dict\(\)") as error:
        load_weights(nn.Linear(3, 4), tmp_path / "full.pt")
    assert "weights_only=False" not in str(error.value) and "\x1b" not in str(error.value)


def _cli_config(tmp_path, **extra):
    config = {"model": {"builtin": "digits_cnn", "pretrain_epochs": 1}, "data": {"builtin": "digits"},
              "tasks": [{"layers": ["*"], "options": {"rank": 8}}], "schedule": {"steps": 0}, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_cli_refuses_a_run_it_cannot_keep_before_training_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "f").write_text("a file")
    assert main(["compress", _cli_config(tmp_path), "--output-dir", str(tmp_path / "f" / "run")]) == 2
    assert "lies under" in capsys.readouterr().err
    assert main(["compress", _cli_config(tmp_path)]) == 2
    assert "output_dir: the CLI keeps its result in a run folder" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before the built-in model was trained


def test_the_built_in_model_is_cached_in_lcpresss_folder_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch,
                                                                                       caplog):
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    assert main(["compress", _cli_config(tmp_path), "--output-dir", str(mine / "run"), "--quiet"]) == 0
    assert sorted(p.name for p in mine.iterdir()) == ["run"]  # nothing beside the run in the user's folder
    (cached,) = (tmp_path / "cache" / "models").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="lcpress"):
        assert main(["compress", _cli_config(tmp_path), "--output-dir", str(mine / "again"), "--quiet"]) == 0
    assert "could not be read" in caplog.text and "training it again" in caplog.text
    names = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert names[0] == cached.name and names[1].startswith(cached.name + ".corrupt-")


def test_a_lazy_layer_not_yet_run_is_named_with_the_fix():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(LcpressError, match=r"'0.weight' is not initialized yet \(a lazy layer.*run the model once"):
        lcpress.compress(model, {"tasks": [{"layers": ["2"], "options": {"rank": 1}}], "schedule": {"steps": 0}},
                         example_input=torch.randn(1, 4), progress=False)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_last_one_stays(tmp_path, monkeypatch):
    """A full disk mid-run: a FileWriteError naming the file (an OSError too), and the run resumes afterwards."""
    out = tmp_path / "run"
    import lcpress.io.files as files

    real = files.st_save_file
    calls = []

    def full_disk(tensors, path, metadata):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint after LC step 1: part of it written, then the disk is full
            Path(path).write_bytes(b"\0" * 10)
            raise OSError(28, "No space left on device")
        return real(tensors, path, metadata=metadata)

    with monkeypatch.context() as m:
        m.setattr(files, "st_save_file", full_disk)
        with pytest.raises(lcpress.FileWriteError, match=r"cannot write '.*checkpoint.safetensors' \(No space left"):
            _compress(out)
    assert lcpress.io.files.read_file(out / "checkpoint.safetensors")[1]["engine"]["next_step"] == 1
    assert list(_compress(out, resume=True).history["step"]) == [0, 1, 2]


@pytest.mark.parametrize("where", ["train", "calibration"])
def test_a_generator_as_data_is_refused_before_it_is_used_up(where):
    """Read at every LC step, a generator would train the first L step and leave the others nothing, silently."""
    train, evaluation = _data()
    batches = (batch for batch in train)
    kwargs = {"loaders": (batches, evaluation)} if where == "train" else {"loaders": (train, evaluation),
                                                                         "calibration": batches}
    with pytest.raises(ConfigError, match=r"a generator can be read only once"):
        lcpress.compress(_net(), _config(None, output_dir=None), progress=False, **kwargs)


def test_inputs_of_another_dtype_than_the_weights_are_named_with_the_cast():
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 2}}], "schedule": {"steps": 0}}
    with pytest.raises(LcpressError, match=r"inputs are torch.float64 and its weights torch.float32; give inputs"):
        lcpress.compress(_net(), config, example_input=torch.randn(1, 12, dtype=torch.float64), progress=False)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # users still have them
@pytest.mark.parametrize("layer", ["0", "0.0"])
def test_a_scripted_submodule_is_named_as_torchscript(layer):
    model = nn.Sequential(torch.jit.script(nn.Sequential(nn.Linear(8, 8))), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=rf"'{layer}' is a TorchScript module .*compress the plain model, then script"):
        lcpress.compress(model, {"tasks": [{"layers": [layer], "options": {"rank": 2}}], "schedule": {"steps": 0}},
                         example_input=torch.randn(1, 8), progress=False)


def test_a_checkpoint_that_records_no_config_is_not_resumed(tmp_path, power_cut):
    """Every checkpoint lcpress writes records its config; one without it cannot be checked as the run's own."""
    from lcpress.io.files import read_file, write_file

    out = tmp_path / "run"
    _interrupted(out, power_cut)
    path = out / "checkpoint.safetensors"
    tensors, meta = read_file(path)
    write_file(path, tensors, {k: v for k, v in meta.items() if k != "config"})
    before = (out / "run.json").read_text()
    with pytest.raises(RunDirectoryError, match=r"records no config, so it cannot be checked as this run's own"):
        _compress(out, resume=True)
    assert (out / "run.json").read_text() == before and path.exists()
