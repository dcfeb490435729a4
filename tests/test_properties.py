"""Property-based checks of the input surface: generated configs and model files, and a kill/resume soak.

* any config — valid, or a valid one mutated anywhere — either plans or
  raises :class:`ConfigError`, before any training;
* any model file — valid, truncated, bit-flipped, with a mutated or crafted
  manifest — either loads or raises :class:`CheckpointError`, without
  allocating more than a bound;
* a run killed (SIGKILL) at random moments and resumed each time ends
  bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

import lcpress
from lcpress import CheckpointError, ConfigError
from lcpress.io.files import read_file, write_file

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

BASE = {
    "tasks": [{"layers": ["0", "2"], "scheme": "low_rank", "options": {"rank_multiple": 4}, "cost": "flops",
               "target": {"cost": "params", "ratio": 0.5}}],
    "schedule": {"mu0": "auto", "factor": 1.5, "steps": 2, "tolerance": 0.01},
    "train": {"epochs": 1, "lr": 0.01, "optimizer": "sgd"},
    "batchnorm": {"recalibrate": True, "batches": 10},
    "seed": 0,
}
KEYS = [("tasks", 0, "layers"), ("tasks", 0, "scheme"), ("tasks", 0, "options"), ("tasks", 0, "options", "rank"),
        ("tasks", 0, "cost"), ("tasks", 0, "target"), ("tasks", 0, "target", "ratio"), ("tasks", 0, "alpha"),
        ("schedule",), ("schedule", "mu0"), ("schedule", "factor"), ("schedule", "steps"), ("train", "lr"),
        ("train", "optimizer"), ("batchnorm", "batches"), ("seed",), ("tasks",), ("cost_models",), ("output_dir",),
        ("tasks", 0, "shared"), ("tasks", 0, "exclude"), ("device",), ("sweep", "targets")]


def _mutated(base, path, value, delete):
    import copy

    config = copy.deepcopy(base)
    node = config
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return config
    if isinstance(node, dict):
        if delete:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return config


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(KEYS), value=JSON, delete=st.booleans(), extra=st.none() | st.tuples(st.text(max_size=6),
                                                                                                  JSON))
def test_any_config_plans_or_raises_config_error(path, value, delete, extra):
    config = _mutated(BASE, path, value, delete)
    if extra is not None:
        config[extra[0]] = extra[1]
    try:
        loaded = lcpress.load_config(config)
        lcpress.core.plan.plan(_tiny(), loaded, torch.zeros(1, 6))
    except ConfigError:
        pass


# ------------------------------------------------------------------ model files
def _valid_file(path: Path) -> Path:
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 2}}, {"layers": ["2"], "scheme": "quantize"}],
              "schedule": {"steps": 0}}
    result = lcpress.compress(_tiny(), config, example_input=torch.zeros(1, 6), progress=False)
    return result.save(path, overwrite=True)


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    return _valid_file(tmp_path_factory.mktemp("valid") / "model.safetensors").read_bytes()


def _load_only_checkpoint_errors(path: Path, model=None) -> None:
    before = _rss_mb() if Path("/proc/self/statm").exists() else 0.0
    try:
        lcpress.load(path, model=model)
    except CheckpointError:
        pass
    if before:
        assert _rss_mb() - before < 200, "loading a crafted file allocated memory it does not hold"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4))
def test_damaged_files_load_or_raise_checkpoint_error(tmp_path, valid_bytes, cut, flips):
    data = bytearray(valid_bytes[: max(1, cut % (len(valid_bytes) + 1))])
    for at, xor in flips:
        data[at % len(data)] ^= xor
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(data))
    _load_only_checkpoint_errors(path)
    _load_only_checkpoint_errors(path, model=_tiny())


FIELDS = ["layers", "architecture", "not_rebuildable", "format_version", "config", "lcpress_version"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON, layer_field=st.sampled_from(["name", "weight_shape", "module",
                                                                              "realized", "aliases", "form"]),
       layer_value=JSON, in_layer=st.booleans())
def test_crafted_manifests_load_or_raise_checkpoint_error(tmp_path, valid_bytes, field, value, layer_field,
                                                          layer_value, in_layer):
    source = tmp_path / "valid.safetensors"
    source.write_bytes(valid_bytes)
    tensors, manifest = read_file(source)
    if in_layer:
        manifest["layers"][0][layer_field] = layer_value
    else:
        manifest[field] = value
    path = tmp_path / "crafted.safetensors"
    write_file(path, tensors, manifest)  # a valid checksum: an attacker can always compute one
    _load_only_checkpoint_errors(path)
    _load_only_checkpoint_errors(path, model=_tiny())


ARGS = st.dictionaries(st.sampled_from(["in_features", "out_features", "in_channels", "out_channels", "kernel_size",
                                        "bias", "groups", "channels", "kept", "shape", "entries", "nonzeros", "p",
                                        "num_features", "rank", "factor", "dim"]),
                       st.integers(-3, 2**40) | st.lists(st.integers(-2, 2**40), max_size=3) | st.booleans(),
                       max_size=5)
TREE = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["Linear", "Conv2d", "GroupedLinear", "ScatterChannels",
                                                    "CodebookWeight", "SparseWeight", "BatchNorm2d", "Embedding",
                                                    "InterleavedLowRank", "Sequential"]),
                           "args": ARGS, "children": st.just([])}),
    lambda inner: st.fixed_dictionaries({"type": st.just("Sequential"), "args": st.just({}),
                                         "children": st.lists(st.tuples(st.just("0"), inner).map(list), max_size=3)}),
    max_leaves=6,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=TREE)
def test_crafted_architectures_allocate_nothing_and_raise_checkpoint_error(tmp_path, tree):
    path = tmp_path / "crafted.safetensors"
    write_file(path, {"weight": torch.zeros(2, 2)}, {
        "format": "lcpress-model", "format_version": 1, "lcpress_version": "0", "torch_version": "0", "layers": [],
        "architecture": tree, "not_rebuildable": [], "config": None})
    _load_only_checkpoint_errors(path)


# ------------------------------------------------------------------ kill and resume
JOB = """
import torch
from torch import nn

def model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 16, generator=g)
    ds = torch.utils.data.TensorDataset(x, x[:, :4].argmax(1))
    train = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, torch.utils.data.DataLoader(ds, batch_size=512)
"""


def _job(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.py").write_text(textwrap.dedent(JOB))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "model": {"factory": "job:model"}, "data": {"factory": "job:data"},
        "tasks": [{"layers": ["0", "2"], "target": {"cost": "params", "ratio": 0.4}, "options": {"rank_multiple": 4}}],
        "schedule": {"steps": 6}, "train": {"epochs": 2, "lr": 0.05}, "output_dir": name}))
    return folder / f"{name}.yaml"


def _lcpress(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LCPRESS_QUIET": "1", "LCPRESS_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.Popen([sys.executable, "-m", "lcpress", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finished(run: Path) -> bool:
    info = run / "run.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "finished"


def test_a_run_killed_at_random_moments_and_resumed_ends_bit_identical(tmp_path):
    start = time.perf_counter()
    full = _lcpress("compress", str(_job(tmp_path, "full")), "--quiet", cwd=tmp_path)
    assert full.wait(timeout=600) == 0, full.stderr.read()
    whole = time.perf_counter() - start  # kill times scale with it: a fixed 2–7 s missed every run on a fast machine
    config = _job(tmp_path, "cut")
    rng = random.Random(7)
    kills = 0
    for _ in range(12):
        resume = ["--resume"] if (tmp_path / "cut" / "checkpoint.safetensors").exists() else []
        process = _lcpress("compress", str(config), "--quiet", *resume, cwd=tmp_path)
        try:
            code = process.wait(timeout=rng.uniform(0.2, 0.8) * whole if kills < 4 else 600)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)  # no cleanup, no flush: the worst moment to stop
            process.wait()
            kills += 1
            if _finished(tmp_path / "cut"):
                break  # the kill landed after the run had written its model and marked itself finished
            continue
        assert code == 0, process.stderr.read()
        break
    assert kills >= 1, "no kill landed mid-run: the soak tested nothing"
    assert (tmp_path / "cut" / "model.safetensors").is_file(), "the killed run never finished"
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = [(tmp_path / run / "history.csv").read_text().splitlines() for run in ("full", "cut")]
    assert [line.rsplit(",", 1)[0] for line in history[0]] == [line.rsplit(",", 1)[0] for line in history[1]]
