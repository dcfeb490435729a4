"""A real third-party plugin package, found through the 'lcpress' entry-point group."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

import lcpress
from lcpress import PluginError
from lcpress.cli import main
from lcpress.core.registry import reset_registry

PLUGIN_SOURCE = '''
from dataclasses import dataclass
import torch
import lcpress

@dataclass
class KeepOptions(lcpress.Options):
    scale: float = lcpress.option(1.0, help="multiplies the weight")

class KeepScheme(lcpress.Scheme):
    """A scheme that stores the weight scaled: enough to prove it is called."""
    name = "keep_scaled"
    Options = KeepOptions

    def compress(self, w, ctx):
        return lcpress.State({"w": w.detach() * self.options.scale}, {})

    def decompress(self, state):
        return state.tensors["w"]

class ConstantCost(lcpress.CostModel):
    name = "constant_cost"
    unit = "units"

    def cost(self, spec, form):
        return 7.0

@lcpress.hookimpl
def lcpress_register_schemes(register):
    register(KeepScheme)

@lcpress.hookimpl
def lcpress_register_cost_models(register):
    register(ConstantCost)
'''


def _install(tmp_path, name: str, source: str, module: str) -> None:
    """Write a module and its dist-info (as pip would) into a directory on sys.path."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"{name.replace('-', '_')}-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[lcpress]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LCPRESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reset_registry()
    yield tmp_path
    reset_registry()
    for mod in [m for m in sys.modules if m.startswith("lcpress_test_")]:
        del sys.modules[mod]


def test_entry_point_is_discovered_listed_and_usable_by_name(site, capsys):
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    registry = lcpress.get_registry()
    origin = registry.schemes.origins["keep_scaled"]
    assert (origin.plugin, origin.package, origin.version) == ("lcpress_test_plugin", "lcpress-test-plugin", "1.2.3")

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "keep_scaled" in out and "constant_cost" in out and "lcpress-test-plugin 1.2.3" in out

    model = nn.Sequential(nn.Linear(4, 4))
    w = model[0].weight.detach().clone()
    config = {"tasks": [{"layers": ["0"], "scheme": "keep_scaled", "options": {"scale": 0.5}, "cost": "constant_cost"}],
              "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=torch.randn(1, 4))
    assert torch.allclose(model[0].weight, 0.5 * w)
    assert result.history["cost_constant_cost"].iloc[0] == 7.0
    with pytest.raises(lcpress.ConfigError, match=r"tasks\[0\]\.options\.scale: expected a number"):
        lcpress.load_config({"tasks": [{"layers": ["0"], "scheme": "keep_scaled", "options": {"scale": "big"}}]})


def test_plugin_that_raises_on_import_is_named(site):
    _install(site, "lcpress-broken", "raise ImportError('needs libfoo')\n", "lcpress_test_broken")
    with pytest.raises(PluginError, match=r"plugin 'lcpress_test_broken'.*lcpress-broken 1\.2\.3.*needs libfoo"):
        lcpress.get_registry()


def test_plugin_cannot_replace_a_builtin(site):
    source = PLUGIN_SOURCE.replace('name = "keep_scaled"', 'name = "low_rank"')
    _install(site, "lcpress-hijack", source, "lcpress_test_hijack")
    with pytest.raises(PluginError, match=r"'low_rank' is registered twice.*lcpress_test_hijack"):
        lcpress.get_registry()


def test_autoload_switches(site, monkeypatch):
    _install(site, "lcpress-broken", "raise ImportError('needs libfoo')\n", "lcpress_test_broken")
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    monkeypatch.setenv("LCPRESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_registry()
    assert "keep_scaled" not in lcpress.get_registry().schemes.classes
    monkeypatch.delenv("LCPRESS_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("LCPRESS_LOAD_PLUGINS", "lcpress_test_plugin")  # the broken one is not loaded
    reset_registry()
    assert "keep_scaled" in lcpress.get_registry().schemes.classes


def test_yaml_config_file_selects_entry_point_plugins_by_name(site, tmp_path):
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    config = tmp_path / "run.yaml"
    config.write_text(
        "tasks:\n"
        "  - layers: ['0']\n"
        "    scheme: keep_scaled\n"
        "    options: {scale: 2.0}\n"
        "    cost: constant_cost\n"
        "schedule: {steps: 0}\n"
    )
    model = nn.Sequential(nn.Linear(4, 4))
    w = model[0].weight.detach().clone()
    result = lcpress.compress(model, config, example_input=torch.randn(1, 4), progress=False)
    assert torch.allclose(model[0].weight, 2 * w)
    assert result.layers.set_index("layer").loc["0", "scheme"] == "keep_scaled"


def test_plugins_json_lists_the_package_of_every_entry(site, capsys):
    import json

    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    assert main(["plugins", "--json", "--options"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["keep_scaled"]["package"] == "lcpress-test-plugin" and rows["keep_scaled"]["version"] == "1.2.3"
    assert rows["keep_scaled"]["options"][0][:3] == ["scale", "float", "1.0"]
    assert rows["constant_cost"]["available"] == "yes" and rows["low_rank"]["package"] == "lcpress"


def test_trace_switch_logs_every_hook_call(site, monkeypatch, caplog):
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    monkeypatch.setenv("LCPRESS_TRACE_PLUGINS", "1")
    reset_registry()
    with caplog.at_level("WARNING", logger="lcpress.plugins"):
        lcpress.get_registry()
    traced = caplog.text
    assert "lcpress_register_schemes: calling plugin 'lcpress_test_plugin' (lcpress-test-plugin 1.2.3)" in traced
    assert "lcpress_register_cost_models: calling plugin 'lcpress.costmodels.flops'" in traced
