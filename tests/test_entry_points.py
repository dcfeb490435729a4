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


def test_hook_function_with_the_wrong_argument_is_one_line_naming_the_package_and_switches(site, capsys):
    source = PLUGIN_SOURCE.replace("def lcpress_register_schemes(register):\n    register(KeepScheme)",
                                   "def lcpress_register_schemes(registry):\n    registry(KeepScheme)")
    _install(site, "lcpress-argname", source, "lcpress_test_argname")
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lcpress: error: plugin 'lcpress_test_argname' (lcpress-argname "
                                                   "1.2.3) does not fit lcpress's hooks")
    assert "lcpress_register_schemes(registry)" in err and "{'registry'}" in err
    assert "LCPRESS_LOAD_PLUGINS=" in err and "lcpress_test_plugin" in err and "LCPRESS_DISABLE_PLUGIN_AUTOLOAD=1" in err


def test_plugin_raising_in_its_hook_names_the_switches_that_run_without_it(site):
    source = PLUGIN_SOURCE.replace("    register(KeepScheme)", "    raise RuntimeError('boom in my hook')")
    _install(site, "lcpress-raising", source, "lcpress_test_raising")
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    with pytest.raises(PluginError, match=r"plugin 'lcpress_test_raising' \(lcpress-raising 1\.2\.3\) raised in "
                                          r"lcpress_register_schemes: RuntimeError: boom in my hook\. Fix or uninstall "
                                          r"lcpress-raising, or run without it: LCPRESS_LOAD_PLUGINS=.*"
                                          r"lcpress_test_plugin.* to load only the others, or "
                                          r"LCPRESS_DISABLE_PLUGIN_AUTOLOAD=1"):
        lcpress.get_registry()


def test_load_plugins_name_that_matches_no_entry_point_is_an_error(site, monkeypatch):
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    monkeypatch.setenv("LCPRESS_LOAD_PLUGINS", "lcpress_test_plugn")
    reset_registry()
    with pytest.raises(PluginError, match=r"LCPRESS_LOAD_PLUGINS=lcpress_test_plugn names 'lcpress_test_plugn', which "
                                          r"is no installed entry point of the 'lcpress' group \(did you mean "
                                          r"'lcpress_test_plugin'\?\); installed: .*lcpress_test_plugin"):
        lcpress.get_registry()


def test_unknown_scheme_says_which_entry_points_load_plugins_left_out(site, monkeypatch):
    _install(site, "lcpress-test-plugin", PLUGIN_SOURCE, "lcpress_test_plugin")
    _install(site, "lcpress-other", PLUGIN_SOURCE.replace("keep_scaled", "keep_other").replace(
        "constant_cost", "other_cost"), "lcpress_test_other")
    monkeypatch.setenv("LCPRESS_LOAD_PLUGINS", "lcpress_test_other")
    reset_registry()
    with pytest.raises(lcpress.ConfigError, match=r"no scheme named 'keep_scaled'; registered: .*\. "
                                                  r"LCPRESS_LOAD_PLUGINS=lcpress_test_other is set, so the installed "
                                                  r"entry point\(s\) .*lcpress_test_plugin.* were not loaded"):
        lcpress.load_config({"tasks": [{"layers": ["0"], "scheme": "keep_scaled"}]})
