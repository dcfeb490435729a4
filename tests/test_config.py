"""Config parsing: every bad input stops before training with the key path."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lcpress
import lcpress.cli
from lcpress import ConfigError, get_registry, load_config


def _cfg(**over):
    base = {"tasks": [{"layers": ["fc"], "scheme": "low_rank", "cost": "flops"}]}
    base.update(over)
    return base


@pytest.mark.parametrize(
    "data,message",
    [
        (_cfg(shedule={}), r"shedule: unknown key \(did you mean 'schedule'\?\)"),
        (_cfg(schedule={"mu0": -1}), r"schedule\.mu0: must be positive"),
        (_cfg(schedule={"steps": "ten"}), r"schedule\.steps: expected an integer"),
        (_cfg(schedule={"factor": 0.5}), r"schedule\.factor"),
        ({"tasks": [{"layers": ["fc"], "scheme": "lowrank"}]}, r"tasks\[0\]\.scheme: no scheme named 'lowrank'; registered: .*low_rank"),
        ({"tasks": [{"layers": ["fc"], "cost": "latency"}]}, r"tasks\[0\]\.cost: no cost model named 'latency'"),
        ({"tasks": [{"layers": ["fc"], "options": {"rank": 0}}]}, r"tasks\[0\]\.options\.rank: must be at least 1"),
        ({"tasks": [{"layers": ["fc"], "target": {"ratio": 2}}]}, r"tasks\[0\]\.target\.ratio: must be in \(0, 1\]"),
        ({"tasks": [{"layers": ["fc"], "target": {"ratio": 0.5, "value": 3}}]}, r"exactly one of 'ratio' and 'value'"),
        ({"tasks": [{"layers": ["fc"], "alpha": 1e-3, "target": {"ratio": 0.5}}]}, r"either 'alpha' or 'target'"),
        ({"tasks": []}, r"tasks: give at least one task"),
        ({"tasks": [{"scheme": "low_rank"}]}, r"tasks\[0\]\.layers: required key is missing"),
        (_cfg(device="tpu"), r"device: must be 'cpu' or 'cuda"),
        (_cfg(train={"optimizer": "lbfgs"}), r"train\.optimizer: 'lbfgs' is not allowed; choose one of 'sgd', 'adam'"),
        ({"tasks": [{"layers": ["fc"], "scheme": "prune", "options": {"keep": 0.2}}]},
         r"options\.keep: expected an integer, got 0\.2 \(did you mean keep_fraction: 0\.2\?\)"),
        ({"tasks": [{"layers": ["fc"], "scheme": "quantize", "options": {"k": [2, 4]}}]},
         r"options\.k: expected an integer, got \[2, 4\] \(did you mean k_choices: \[2, 4\]\?\)"),
        ({"tasks": [{"layers": ["fc"], "scheme": "prune", "options": {"keep": 0.2, "keep_fraction": 0.1}}]},
         r"options\.keep: expected an integer, got 0\.2$"),
        # common slips name their fix
        ({"tasks": [{"layers": ["fc"], "target": 0.3}]},
         r"tasks\[0\]\.target: expected a mapping, got float 0\.3; write \{ratio: 0\.3\}"),
        ({"tasks": [{"layers": ["fc"], "target": {"flops": 0.3}}]},
         r"target\.flops: unknown key \(a target names its cost model: \{cost: flops, ratio: 0\.3\}\)"),
        ({"tasks": [{"layers": ["fc"], "ratio": 0.3}]}, r"tasks\[0\]\.ratio: unknown key \(a budget goes under target"),
        ({"tasks": [{"layers": ["fc"], "rank": 8}]}, r"tasks\[0\]\.rank: unknown key \(.*options: \{rank: 8\}"),
        ({"tasks": {"layers": ["fc"]}}, r"tasks: expected a list, got one mapping; make it a list item"),
        ({"tasks": [{"layers": ["fc"], "scheme": "quantize", "options": {"bits": 4}}]}, r"4 bits is k: 16"),
        ({"tasks": [{"layers": ["fc"], "scheme": "prune", "options": {"sparsity": 0.9}}]},
         r"a sparsity of 0\.9 is keep_fraction: 0\.1\)"),
        (_cfg(train={"learning_rate": 0.1}), r"train\.learning_rate: unknown key \(did you mean 'lr'\?\)"),
    ],
)
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(data)


def test_yaml_file_and_scientific_notation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks:\n  - layers: [fc]\n    alpha: 1e-6\nschedule:\n  mu0: 1e-3\n")
    config = load_config(path)
    assert config.tasks[0].alpha == 1e-6 and config.schedule.mu0 == 1e-3
    assert load_config(config.to_dict()).to_dict() == config.to_dict()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    "layers,message",
    [
        (["fcc"], r"tasks\[0\]\.layers\[0\]: 'fcc' matches no layer of the model; compressible layers: conv, fc"),
        (["pool"], r"'pool' is a AdaptiveAvgPool2d; lcpress compresses nn\.Linear, nn\.Conv2d and nn\.Embedding"),
    ],
)
def test_layer_names_are_checked_before_training(layers, message):
    trained = []
    with pytest.raises(ConfigError, match=message):
        lcpress.compress(Net(), {"tasks": [{"layers": layers}]}, train_fn=lambda *a: trained.append(1),
                         example_input=torch.randn(1, 1, 6, 6))
    assert not trained


def test_a_layer_in_two_groups_is_refused():
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.layers: layer 'fc' is already compressed by tasks\[0\]"):
        lcpress.compress(Net(), {"tasks": [{"layers": ["fc"]}, {"layers": ["*"]}], "schedule": {"steps": 0}},
                         example_input=torch.randn(1, 1, 6, 6))


def test_steps_without_a_train_fn_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs an L step"):
        lcpress.compress(Net(), {"tasks": [{"layers": ["fc"]}]}, example_input=torch.randn(1, 1, 6, 6))


def test_cost_model_options_are_validated():
    config = load_config({"tasks": [{"layers": ["fc"]}], "cost_models": {"cpu_latency": {"batch_size": 64}}})
    assert config.cost_models["cpu_latency"]["batch_size"] == 64
    with pytest.raises(ConfigError, match=r"cost_models\.cpu_latency\.batch_size: must be at least 1"):
        load_config({"tasks": [{"layers": ["fc"]}], "cost_models": {"cpu_latency": {"batch_size": 0}}})
    with pytest.raises(ConfigError, match=r"cost_models\.cpu_latency\.thread: unknown key \(did you mean 'threads'"):
        load_config({"tasks": [{"layers": ["fc"]}], "cost_models": {"cpu_latency": {"thread": 2}}})
    with pytest.raises(ConfigError, match=r"cost_models\.flops\.batch_size: cost_models\.flops takes no options"):
        load_config({"tasks": [{"layers": ["fc"]}], "cost_models": {"flops": {"batch_size": 8}}})
    with pytest.raises(ConfigError, match=r"cost_models\.tpu_latency: no cost model named"):
        load_config({"tasks": [{"layers": ["fc"]}], "cost_models": {"tpu_latency": {}}})


@pytest.mark.parametrize("bounds, value, message", [
    ({"ge": 1}, 0, "must be at least 1, got 0"),
    ({"gt": 0}, 0.0, "must be positive, got 0.0"),
    ({"ge": 0}, -1, "must be non-negative, got -1"),
    ({"gt": 0, "le": 1}, 1.5, r"must be in \(0, 1\], got 1.5"),
    ({"ge": 2, "lt": 10}, 10, r"must be in \[2, 10\), got 10"),
    ({"le": 3}, 4, "must be at most 3, got 4"),
    ({"choices": (8, 16, 32)}, 12, "must be one of 8, 16 or 32, got 12"),
    ({"ge": 1, "nonempty": True}, [], "give at least one value"),
    ({"ge": 1, "nonempty": True}, [2, 0], "entry 1 must be at least 1, got 0"),
])
def test_declared_bounds_are_checked_with_the_key_path(bounds, value, message):
    from dataclasses import dataclass

    @dataclass
    class Opts(lcpress.Options):
        x: Any = lcpress.option(None, help="x", **bounds)

    with pytest.raises(ConfigError, match=rf"^tasks\[0\]\.options\.x: {message}$"):
        Opts.from_dict({"x": value}, "tasks[0].options")
    with pytest.raises(ConfigError, match=message):  # built in Python, too
        Opts(x=value)
    assert Opts.from_dict({"x": None}).x is None  # an unset optional option is never out of range


def test_listings_show_every_declared_range():
    rows = {r.name: r for r in get_registry().scheme("prune").Options.rows()}
    assert rows["keep_fraction"].bounds == "in (0, 1]" and rows["multiple"].bounds == "at least 1"
    assert rows["fractions"].bounds == "in (0, 1]; a non-empty list"
    assert {r.name: r.bounds for r in get_registry().cost_model("storage").Options.rows()} == \
        {"dtype_bits": "one of 8, 16, 32 or 64"}
    reference = lcpress.cli.options_reference()
    assert "mu0: float | 'auto' = auto  (positive)" in reference and "finetune:" in reference and "sweep:" in reference
    assert "batchnorm:" in reference


@pytest.mark.parametrize("key, value", [("mu0", float("inf")), ("factor", float("-inf")), ("mu0", float("nan")),
                                        ("tolerance", float("inf"))])
def test_infinite_or_nan_schedule_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"schedule\.{key}: expected (a finite number|float \| 'auto'), got {value}"):
        lcpress.load_config({"tasks": [{"layers": ["*"]}], "schedule": {key: value}})


def test_a_config_built_from_dataclasses_gets_the_checks_a_mapping_gets(tmp_path):
    from lcpress import LCConfig, ScheduleConfig, TaskConfig
    from lcpress.config import TargetConfig, parse_config

    parsed = parse_config(LCConfig(tasks=[TaskConfig(layers=["*"], target={"ratio": 0.5})]))
    assert parsed.tasks[0].target == TargetConfig(ratio=0.5)  # a mapping inside a dataclass becomes its config
    out = tmp_path / "run"
    bad = LCConfig(tasks=[TaskConfig(layers=["*"], options={"rank": 8})], schedule=ScheduleConfig(steps=2.5),
                   output_dir=str(out))
    with pytest.raises(ConfigError, match="schedule.steps: expected an integer, got 2.5"):
        lcpress.compress(nn.Sequential(nn.Linear(8, 8)), bad, train_fn=lambda *a: None,
                         example_input=torch.randn(1, 8))
    assert not out.exists()  # refused before the run folder was made: the next try is not blocked


@pytest.mark.parametrize("scheme", ["low_rank", "prune"])
def test_a_choosing_scheme_with_neither_target_nor_alpha_is_refused_instead_of_compressing_nothing(scheme):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    config = {"tasks": [{"layers": ["*"], "scheme": scheme, "cost": "params"}], "schedule": {"steps": 0}}
    with pytest.raises(ConfigError, match=r"tasks\[0\]: .*neither a target nor alpha > 0.*nothing would be compressed"):
        lcpress.compress(model, config, example_input=torch.randn(1, 16))
    config["tasks"][0]["alpha"] = 1.0
    result = lcpress.compress(model, config, example_input=torch.randn(1, 16))
    assert any(r.form["kind"] != "dense" for r in result.records)


def test_yaml_merge_keys_share_settings_and_a_duplicate_key_still_names_its_line(tmp_path):
    from lcpress.config import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("tasks:\n  - &low {layers: ['0'], scheme: low_rank, options: {rank: 8}}\n"
                    "  - <<: *low\n    layers: ['2']\n    options: {rank: 4}\n")
    assert read_yaml(path)["tasks"][1] == {"layers": ["2"], "scheme": "low_rank", "options": {"rank": 4}}
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML: key 'seed' appears twice .*\n  at line 2") as error:
        read_yaml(path)
    assert "<unicode string>" not in str(error.value)


def test_a_config_whose_aliases_expand_past_any_real_config_is_refused_in_one_line(tmp_path):
    """Nine aliases nested eight deep share one list in memory and spell out 43 million values in a message."""
    from lcpress.config import read_yaml

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines + ["seed: *a8", ""]))
    with pytest.raises(ConfigError, match=r"bomb.yaml: the config expands to more than 100,000 values") as error:
        read_yaml(path)
    assert len(str(error.value)) < 300


def test_a_layer_that_is_no_compressible_kind_says_whether_it_holds_any(capsys):
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4)), nn.LayerNorm(4))
    for layer, said in [("0", r"'0' is a Sequential; .*name the layers inside it, e.g. '0.\*'"),
                        ("1", r"'1' is a LayerNorm; .*layers, and it holds none")]:
        with pytest.raises(ConfigError, match=said):
            lcpress.compress(model, {"tasks": [{"layers": [layer], "options": {"rank": 2}}], "schedule": {"steps": 0}},
                             example_input=torch.randn(1, 4))


def test_resume_and_force_together_are_refused(tmp_path):
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 2}}], "schedule": {"steps": 0},
              "output_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="pass one of them"):
        lcpress.compress(nn.Sequential(nn.Linear(4, 4)), config, example_input=torch.randn(1, 4), resume=True,
                         force=True)


def test_a_compiled_models_wrapper_prefix_in_a_layer_name_is_named_with_the_fix():
    model = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), backend="eager")
    with pytest.raises(ConfigError, match=r"'_orig_mod.0' matches no layer of the model; layer names are the wrapped "
                                          r"module's own: drop the '_orig_mod.' prefix"):
        lcpress.compress(model, {"tasks": [{"layers": ["_orig_mod.0"], "options": {"rank": 1}}],
                                 "schedule": {"steps": 0}}, example_input=torch.randn(1, 4), progress=False)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated:DeprecationWarning")
def test_a_scripted_model_is_named_as_torchscript_with_the_fix():
    model = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ConfigError, match=r"its layers are TorchScript \(torch.jit.script\), which lcpress cannot "
                                          r"change; compress the plain model, then script it"):
        lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 1}}], "schedule": {"steps": 0}},
                         example_input=torch.randn(1, 4), progress=False)
