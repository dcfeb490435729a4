"""The sample third-party package examples/lcpress-tucker, installed as a user would install it.

CI installs it (``pip install --no-deps -e examples/lcpress-tucker``); these
tests find it only through its ``lcpress`` entry point, and a YAML config
selects its scheme and cost model by name.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import lcpress
from lcpress import Dense, LowRank, digits_cnn, trace
from lcpress.cli import main
from lcpress.core.registry import reset_registry
from lcpress.testing import check_cost_model, check_scheme

INSTALL = "pip install --no-deps -e examples/lcpress-tucker (CI installs it)"
tucker = pytest.importorskip("lcpress_tucker", reason=f"the sample plugin package is not installed: {INSTALL}")
if not any(ep.name == "tucker" for ep in importlib.metadata.entry_points(group="lcpress")):
    pytest.skip(f"lcpress_tucker is importable but its 'lcpress' entry point is not registered: {INSTALL}",
                allow_module_level=True)

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "lcpress-tucker" / "configs" / "digits_tucker.yaml"


@pytest.fixture
def one_thread():
    """Tiny CNN, shared CPUs: one thread trains it several times faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def installed(monkeypatch):
    """Entry points on, loading only the sample package (other installed plugins stay out)."""
    monkeypatch.delenv("LCPRESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("LCPRESS_LOAD_PLUGINS", "tucker")
    reset_registry()
    yield lcpress.get_registry()
    reset_registry()


def test_entry_point_registers_both_plugins(installed, capsys):
    for kind, name in (("schemes", "tucker2"), ("cost_models", "csv_latency")):
        origin = getattr(installed, kind).origins[name]
        assert (origin.plugin, origin.package) == ("tucker", "lcpress-tucker")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "tucker2" in out and "csv_latency" in out and "lcpress-tucker 0.2.0  (tucker)" in out
    assert "Tucker2Conv2d" in out and "tucker-table" in out


def test_plugin_command_runs_from_the_lcpress_command_line(installed, capsys, tmp_path):
    table = Path(tucker.__file__).parent / "data" / "example_latency.csv"
    assert main(["tucker-table", str(table)]) == 0
    out = capsys.readouterr().out
    assert "device dev-cpu-1thread" in out and "conv2d 3x3 stride 1x1" in out
    broken = tmp_path / "broken.csv"
    broken.write_text(table.read_text().replace(",1.", ",x", 1))
    assert main(["tucker-table", str(broken)]) == 2  # the plugin's own LcpressError: one line, exit 2
    assert "data row" in capsys.readouterr().err


def test_plugin_module_class_saves_and_loads_without_pickle(installed, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, bias=False))
    x = torch.randn(2, 8, 6, 6)
    config = {"tasks": [{"layers": ["0", "2"], "scheme": "tucker2",
                         "options": {"in_rank": 4, "out_rank": 8, "module": "tucker2"}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    assert isinstance(model[0], tucker.Tucker2Conv2d) and (model[0].in_rank, model[0].out_rank) == (4, 8)
    path = result.save(tmp_path / "model.safetensors")
    assert lcpress.io.modelfile.read_manifest(path)["architecture"] is not None
    loaded = lcpress.load(path)  # rebuilt from the file: the registered class, never pickle
    assert type(loaded[0]) is tucker.Tucker2Conv2d and loaded[2].expand.bias is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    reset_registry()
    with pytest.MonkeyPatch.context() as env:  # without the plugin the class is not allowed: a clear refusal
        env.setenv("LCPRESS_DISABLE_PLUGIN_AUTOLOAD", "1")
        with pytest.raises(lcpress.CheckpointError, match="cannot rebuild on its own|unknown type 'Tucker2Conv2d'"):
            lcpress.load(path)
    reset_registry()


def test_yaml_config_compresses_with_the_plugin_scheme_and_cost_model(installed, tmp_path, capsys, one_thread):
    config = yaml.safe_load(CONFIG.read_text())
    assert config["tasks"][0]["scheme"] == "tucker2" and config["tasks"][0]["target"]["cost"] == "csv_latency"
    config["model"]["pretrain_epochs"] = 2  # the shipped config as it is, trained less, to keep the suite fast
    config["schedule"]["steps"] = 2
    path = tmp_path / "tucker.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["compress", str(path), "--quiet", "--output-dir", str(run)]) == 0
    assert "csv_latency_after" in capsys.readouterr().out

    layers = pd.read_csv(run / "layers.csv", dtype={"layer": str}).set_index("layer")
    assert set(layers.loc[["2", "5"], "scheme"]) == {"tucker2"}
    realized = layers[layers["realized"]]
    assert len(realized) and all(form.startswith("tucker2") for form in realized["form"])
    assert (realized["csv_latency_after"] < realized["csv_latency_before"]).all()
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 3 and history["target0_achieved"].iloc[-1] <= history["target0_requested"].iloc[-1]
    assert history["cost_csv_latency"].iloc[-1] < layers["csv_latency_before"].sum()

    model = lcpress.load(run / "model.safetensors")  # standard modules: loads without the plugin
    name = realized.index[0]
    assert isinstance(model.get_submodule(name), nn.Sequential) and len(model.get_submodule(name)) == 3
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_plugin_classes_pass_the_conformance_kit(installed):
    scheme = installed.scheme("tucker2")
    report = check_scheme(scheme, {"rank_multiple": 4})
    assert "exact_errors" in report.passed and "realize" in report.passed
    graph = trace(digits_cnn(), torch.zeros(1, 1, 8, 8))
    forms = [Dense(), tucker.Tucker2(8, 16), LowRank(8)]  # the example table covers these for the digits CNN
    report = check_cost_model(installed.cost_model("csv_latency"), specs=[graph.specs["2"], graph.specs["5"]],
                              forms=forms)
    assert report.passed == ["declaration", "dense", "finite", "vectorized"]
