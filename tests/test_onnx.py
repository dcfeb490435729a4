"""ONNX export: realized models run in onnxruntime as they do in torch; `lcpress export` guards its inputs."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch
from torch import nn

import lcpress
from lcpress.cli import main
from lcpress.runs.demo import digits_cnn
from lcpress.io.export import export_onnx, missing_packages, run_onnx
from lcpress.nn.modules import GroupedLinear, PointwiseConv2d
from lcpress.core.registry import get_registry

pytestmark = pytest.mark.skipif(bool(missing_packages()), reason=f"ONNX export needs {', '.join(missing_packages())}: "
                                                                   f"pip install 'lcpress[onnx]'")
TOLERANCE = 1e-4


def direct(net: nn.Module, tasks: list[dict], x: torch.Tensor, **extra) -> lcpress.CompressionResult:
    """Direct compression only (no training): the realized structure is what export has to handle."""
    return lcpress.compress(net, {"tasks": tasks, "schedule": {"steps": 0}, **extra}, example_input=x[:1],
                            progress=False)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 16))


LOW_RANK = [{"layers": ["0", "5", "8"], "options": {"rank_multiple": 8, "shape": "channel"}, "target": {"cost": "flops", "ratio": 0.3}},
            {"layers": ["2"], "options": {"rank": 8, "shape": "spatial"}}]
INPUT_FIRST = [{"layers": ["2", "5"], "options": {"rank": 4, "shape": "input"}}]
ALDS = [{"layers": ["2", "5", "8"], "scheme": "alds", "options": {"groups": [2, 4], "rank_multiple": 4},
         "target": {"cost": "flops", "ratio": 0.4}}]


def _kinds(model: nn.Module, names: list[str]) -> set[str]:
    """How the named layers were realized: 'pointwise', 'spatial' (k×1 then 1×k), 'grouped conv', 'grouped linear'."""
    kinds = set()
    for name in names:
        for m in model.get_submodule(name).modules():
            if isinstance(m, PointwiseConv2d):
                kinds.add("pointwise")
            elif isinstance(m, GroupedLinear):
                kinds.add("grouped linear")
            elif isinstance(m, nn.Conv2d) and m.groups > 1:
                kinds.add("grouped conv")
            elif isinstance(m, nn.Conv2d) and m.kernel_size[1] == 1 and m.kernel_size[0] > 1:
                kinds.add("spatial")
    return kinds


@pytest.mark.parametrize("tasks, kinds", [(LOW_RANK, {"pointwise", "spatial"}), (INPUT_FIRST, {"pointwise"}),
                                          (ALDS, {"grouped conv", "grouped linear"})],
                         ids=["factorized", "input-first", "grouped"])
def test_realized_model_runs_in_onnxruntime_like_in_torch(tasks, kinds, tmp_path):
    x = torch.randn(5, 1, 8, 8)
    result = direct(digits_cnn(), tasks, x)
    assert kinds <= _kinds(result.model, [r.name for r in result.records if r.realized])  # what the file must carry
    done = export_onnx(result.model, tmp_path / "m.onnx", x[:1])
    assert done.max_abs_error is not None and done.max_abs_error <= TOLERANCE
    with torch.no_grad():
        expected = result.model(x)
    assert float((run_onnx(done.path, x) - expected).abs().max()) <= TOLERANCE  # another batch size: dynamic batch


def test_a_compiled_model_exports_the_module_it_holds(tmp_path):
    net = mlp()
    compiled = torch.compile(net, backend="eager")  # no C compiler needed
    x = torch.randn(3, 64)
    direct(compiled, [{"layers": ["0", "2"], "options": {"rank": 16}}], x[:1])
    done = export_onnx(compiled, tmp_path / "m.onnx", x[:1])
    assert done.max_abs_error is not None and done.max_abs_error <= TOLERANCE
    with torch.no_grad():
        assert float((run_onnx(done.path, x) - net(x)).abs().max()) <= TOLERANCE


def _combination(scheme: str, *parts: dict, layers: tuple[str, ...] = ("2", "10")) -> list[dict]:
    return [{"layers": list(layers), "scheme": scheme, "cost": "storage", "options": {"parts": list(parts)}}]


PACKED = {  # the additive scheme's parallel branches, and layers that decode packed codes in forward()
    "low rank + sparse": (["additive", "low_rank", "prune"], _combination(
        "additive", {"scheme": "low_rank", "options": {"rank": 8}}, {"scheme": "prune", "options": {"keep_fraction": 0.05}})),
    "reshaped low rank": (["additive", "low_rank"], _combination(
        "additive", {"scheme": "low_rank", "options": {"rank": 8}},
        {"scheme": "low_rank", "options": {"rank": 8}, "reshape": 4}, layers=("8",))),  # a Linear's: realized
    "quantized + sparse": (["additive", "quantize", "prune"], _combination(
        "additive", {"scheme": "quantize", "options": {"k": 2}}, {"scheme": "prune", "options": {"keep_fraction": 0.01}})),
    "prune then quantize": (["sequential", "quantize", "prune"], _combination(
        "sequential", {"scheme": "prune", "options": {"keep_fraction": 0.05}},
        {"scheme": "quantize", "options": {"k": 4, "zeros": "keep"}})),
}


@pytest.mark.parametrize("case", PACKED)
def test_additive_and_packed_models_run_in_onnxruntime(case, tmp_path):
    schemes, tasks = PACKED[case]
    missing = [n for n in schemes if n not in get_registry().schemes.classes]
    if missing:
        pytest.skip(f"scheme {', '.join(missing)} is not registered in this build")
    x = torch.randn(5, 1, 8, 8)
    result = direct(digits_cnn(), tasks, x)
    assert any(r.realized for r in result.records)
    if schemes[0] == "additive" and "low_rank" in schemes:  # a structural part runs as its own branch
        from lcpress.nn.modules import ParallelSum

        assert any(isinstance(m, ParallelSum) for m in result.model.modules()), "no parallel branches to export"
    done = export_onnx(result.model, tmp_path / "m.onnx", x[:1])
    assert done.max_abs_error <= TOLERANCE
    with torch.no_grad():
        assert float((run_onnx(done.path, x) - result.model(x)).abs().max()) <= TOLERANCE


def test_export_refuses_to_overwrite_and_non_tensor_inputs(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(mlp(), target, torch.randn(1, 64))
    assert target.read_bytes() == b"keep me"
    with pytest.raises(lcpress.LcpressError, match="one tensor input"):
        export_onnx(mlp(), tmp_path / "d.onnx", {"x": torch.randn(1, 64)})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    x = torch.randn(4, 1, 8, 8)
    direct(digits_cnn(), LOW_RANK, x, output_dir=str(out))
    return out


def test_cli_exports_a_run_and_never_overwrites_without_force(run_dir, tmp_path, capsys):
    target = tmp_path / "digits.onnx"
    assert main(["export", str(run_dir), "--onnx", str(target)]) == 0
    assert "onnxruntime vs torch: max |difference|" in capsys.readouterr().out
    model = lcpress.load(run_dir / "model.safetensors")
    x = torch.randn(3, 1, 8, 8)  # the run recorded a 1×1×8×8 example; the file takes any batch
    with torch.no_grad():
        assert float((run_onnx(target, x) - model(x)).abs().max()) <= TOLERANCE
    before = target.read_bytes()
    assert main(["export", str(run_dir), "--onnx", str(target)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert target.read_bytes() == before
    assert main(["export", str(run_dir), "--onnx", str(target), "--force", "--static-batch",
                 "--input-shape", "2,1,8,8"]) == 0
    assert not list(tmp_path.glob(".digits.onnx.*"))  # no temporary file left behind


def _copy_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.parametrize("damage, message", [
    ("unfinished", "is unfinished"),
    ("no model", "has no model.safetensors"),
    ("corrupt", "corrupted|not a readable"),
    ("not a run", "holds no lcpress run"),
])
def test_cli_refuses_runs_it_cannot_export(run_dir, tmp_path, capsys, damage, message):
    run = _copy_run(run_dir, tmp_path)
    model_file = run / "model.safetensors"
    if damage == "unfinished":
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps(dict(info, status="running")))
    elif damage == "no model":
        model_file.unlink()
    elif damage == "corrupt":
        data = bytearray(model_file.read_bytes())
        data[-10] ^= 0xFF
        model_file.write_bytes(bytes(data))
    else:
        (run / "run.json").unlink()
    target = tmp_path / "out.onnx"
    assert main(["export", str(run), "--onnx", str(target)]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert not target.exists()


class Net(nn.Module):
    """Not allow-listed: the file alone cannot rebuild it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(32, 64)
        self.head = nn.Linear(64, 8)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def make_net() -> Net:
    return Net()


def test_cli_rebuilds_other_models_through_the_config_it_is_given(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # netfactory.py imports make_net from this test module
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "netfactory.py").write_text("from test_onnx import make_net\n")
    (configs / "net.yaml").write_text("model: {factory: 'netfactory:make_net'}\ntasks: [{layers: [body]}]\n")
    x = torch.randn(2, 32)
    task = [{"layers": ["body"], "options": {"rank": 8}}]
    run = tmp_path / "run"
    direct(Net(), task, x, output_dir=str(run), model={"factory": "netfactory:make_net"})
    assert main(["export", str(run), "--onnx", str(tmp_path / "net2.onnx")]) == 2  # the run's factory is not imported
    assert "--config path/to/config.yaml" in capsys.readouterr().err
    assert main(["export", str(run), "--onnx", str(tmp_path / "net.onnx"), "--config", str(configs / "net.yaml")]) == 0
    assert (tmp_path / "net.onnx").is_file()

def test_an_input_the_model_refuses_and_an_opset_the_exporter_cannot_write_are_one_line_each(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(lcpress.LcpressError, match=r"the model does not accept an input of shape \(1, 3, 8, 8\) "
                                           r"\(RuntimeError: .*channels.*\); give an example the model takes"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 8, 8))
    with pytest.raises(lcpress.LcpressError, match=r"opset 3 was asked for, but torch's exporter could only write opset \d+"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8), opset=3, check=False)
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())  # no file, no temporary left


def test_export_inputs_keep_the_recorded_dtype_and_token_ids_are_valid_indices():
    from lcpress.runs.results import example_for

    tokens = {"example_input": {"shape": [1, 6], "dtype": "int64"}}
    x = example_for(tokens, None)  # used to fail: torch.randn has no int64 kernel
    assert x.dtype == torch.int64 and x.shape == (1, 6) and int(x.max()) == 0
    y = example_for(tokens, [2, 9])  # --input-shape keeps the dtype the model takes
    assert y.dtype == torch.int64 and y.shape == (2, 9)
    images = example_for({"example_input": {"shape": [1, 3, 4, 4], "dtype": "float32"}}, [2, 3, 8, 8])
    assert images.dtype == torch.float32 and images.shape == (2, 3, 8, 8) and images.std() > 0


def test_an_exported_file_names_no_path_of_this_machine(tmp_path):
    import onnx

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    done = lcpress.export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 8))
    proto = onnx.load(str(done.path))
    keys = {p.key for node in proto.graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys and "namespace" in keys  # module names stay, for viewers
    assert str(Path(torch.__file__).parent) not in done.path.read_bytes().decode("latin-1")


def test_a_directory_or_a_dtype_onnxruntime_cannot_run_is_refused_and_writes_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(lcpress.LcpressError, match="is a directory; give the file to write"):
        lcpress.export_onnx(model, tmp_path, torch.randn(1, 8), overwrite=True)
    with pytest.raises(lcpress.LcpressError, match="onnxruntime cannot run the exported file .*float32 copy"):
        lcpress.export_onnx(model.to(torch.bfloat16), tmp_path / "m.onnx", torch.randn(1, 8, dtype=torch.bfloat16))
    assert list(tmp_path.iterdir()) == []


def test_an_edited_run_json_cannot_make_export_allocate_terabytes():
    from lcpress.errors import LcpressError
    from lcpress.runs.results import example_for

    record = {"example_input": {"shape": [1000000, 1000000, 16], "dtype": "float32"}}
    with pytest.raises(LcpressError, match="did not record a usable input shape; give one, e.g. --input-shape"):
        example_for(record, None)
    assert example_for({"example_input": {"shape": [2, 3], "dtype": "float32"}}, None).shape == (2, 3)
