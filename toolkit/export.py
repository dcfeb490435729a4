"""Export realized models to ONNX, for onnxruntime and other inference engines.

:func:`export_onnx` writes any model (dense or realized: factorized
Linear/Conv pairs, ``PointwiseConv2d``, ``GroupedLinear``, grouped convs …)
through torch's ``torch.export``-based ONNX exporter, as one self-contained
file with a dynamic batch dimension, and checks the file in onnxruntime against
torch. :func:`export_run` does the same for a finished run directory
(``lcpress export RUN_DIR --onnx model.onnx``), rebuilding the model from its
``model.safetensors`` without pickle.

Layers that decode packed codes in their forward pass (``DecodedLinear``,
``DecodedConv2d``: the quantized and sparse parts) are exported as the plain
Linear/Conv2d they decode to, holding the decoded weight: ONNX has no use for
bit unpacking at inference time, so those layers run at dense speed and are
stored dense in the file.

Needs the ``[onnx]`` extra (onnx, onnxscript; onnxruntime for the check).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .checkpoint import RUN_INFO, RunDirectory
from .errors import CheckpointError, LcpressError
from .storage import replacing

MODEL_FILE = "model.safetensors"


@dataclass
class Exported:
    """What an export wrote, and how far onnxruntime's output is from torch's."""

    path: Path
    max_abs_error: float | None  # None when onnxruntime is not installed


def missing_packages(check: bool = True) -> list[str]:
    """The packages ONNX export needs that are not installed (onnxruntime only when checking)."""
    names = ["onnx", "onnxscript"] + (["onnxruntime"] if check else [])
    return [n for n in names if importlib.util.find_spec(n) is None]


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor, *, overwrite: bool = False,
                dynamic_batch: bool = True, opset: int | None = None, check: bool = True) -> Exported:
    """Write ``model`` as an ONNX file; refuses to overwrite ``path`` unless asked.

    :param example_input: one input tensor (batch first); its shape fixes all
        but the batch dimension.
    :param dynamic_batch: the file accepts any batch size (else exactly the example's).
    :param opset: ONNX opset version (default: the exporter's).
    :param check: run the file in onnxruntime (when installed) and compare with torch.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True (CLI: --force) to replace it")
    if not isinstance(example_input, torch.Tensor):
        raise LcpressError(
            f"ONNX export takes a model with one tensor input, got a {type(example_input).__name__} example; "
            f"export models with several or keyword inputs with torch.onnx.export directly"
        )
    missing = missing_packages(check=False)
    if missing:
        raise LcpressError(f"ONNX export needs {', '.join(missing)}: pip install 'lcpress[onnx]'")
    source = model
    was_training = model.training
    model.eval()
    model = decoded_copy(model)
    try:
        x = example_input
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            if x.shape[0] == 1:  # torch.export fixes size-1 dimensions; trace with two samples
                x = torch.cat([x, x])
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        try:
            with replacing(path) as tmp, _quiet_exporter():
                torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                                  input_names=["input"], output_names=["output"], verbose=False, **kwargs)
        except Exception as exc:
            hint = " (or export with dynamic_batch=False / --static-batch)" if dynamic_batch else ""
            raise LcpressError(f"torch could not export the model to ONNX{hint}: {type(exc).__name__}: {exc}") from exc
        error = None
        if check and not missing_packages():
            error = max_abs_difference(path, model, example_input)
        return Exported(path, error)
    finally:
        source.train(was_training)


def decoded_copy(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it in which every layer that decodes packed codes is the dense layer it decodes to."""
    import copy

    from .packed import DecodedConv2d, DecodedLinear
    from .realize import replace_module

    names = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, (DecodedLinear, DecodedConv2d))]
    if not names:
        return model
    model = copy.deepcopy(model)
    plain: dict[int, nn.Module] = {}  # one replacement per module, so a layer under two names stays shared
    for name in names:
        module = model.get_submodule(name)
        if id(module) not in plain:
            plain[id(module)] = _dense_layer(module)
        replace_module(model, name, plain[id(module)])
    return model


@torch.no_grad()
def _dense_layer(module: nn.Module) -> nn.Module:
    from .packed import DecodedLinear

    weight = module.weight_now()
    kw = {"device": weight.device, "dtype": weight.dtype, "bias": module.bias is not None}
    if isinstance(module, DecodedLinear):
        dense = nn.Linear(module.in_features, module.out_features, **kw)
    else:
        dense = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                          module.dilation, module.groups, padding_mode=module.padding_mode, **kw)
    dense.weight.copy_(weight)
    if module.bias is not None:
        dense.bias.copy_(module.bias)
    return dense.eval()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per optional op library it cannot find, and torch.export warns of its own
    deprecations; keep those out of the user's log."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def run_onnx(path: str | Path, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """The ONNX file's output for ``x``, computed by onnxruntime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0])


@torch.no_grad()
def max_abs_difference(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Largest |onnxruntime − torch| over the outputs for ``x``."""
    from .realize import _first_tensor

    expected = _first_tensor(model(x)).cpu()
    return float((run_onnx(path, x) - expected).abs().max()) if expected.numel() else 0.0


# ------------------------------------------------------------ run directories
def load_run_model(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The realized model of a finished run directory, and its ``run.json``.

    Models built only from allow-listed classes are rebuilt from the file;
    others from the run's ``model.factory`` (importable from the current
    directory or ``PYTHONPATH``), with the saved structure swapped in.
    """
    from .modelfile import load, read_manifest

    run = RunDirectory(run_dir)
    if not run.path.is_dir():
        raise LcpressError(f"{str(run.path)!r} is not a run directory")
    info = run.info()
    if not info:
        raise LcpressError(f"{str(run.path)!r} holds no lcpress run (no readable {RUN_INFO})")
    if info.get("status") != "finished":
        raise LcpressError(
            f"the run in {str(run.path)!r} is unfinished (status {info.get('status')!r}), so it has no realized "
            f"model yet; finish it with `lcpress compress CONFIG --resume`, then export"
        )
    model_file = run.file(MODEL_FILE)
    if not model_file.is_file():
        raise CheckpointError(f"the finished run in {str(run.path)!r} has no {MODEL_FILE}; rerun it with --force")
    manifest = read_manifest(model_file)  # a truncated or edited file fails here, clearly
    if manifest.get("architecture") is not None:
        return load(model_file), info
    factory = ((manifest.get("config") or info.get("config") or {}).get("model") or {}).get("factory")
    if not factory:
        classes = ", ".join(manifest.get("not_rebuildable", []))
        raise LcpressError(
            f"{str(model_file)!r} holds classes lcpress cannot rebuild on its own ({classes}) and the run's config "
            f"names no model.factory; export from Python: "
            f"lcpress.export_onnx(lcpress.load(path, model=MyNet()), 'model.onnx', example_input)"
        )
    from .sources import import_factory

    return load(model_file, model=import_factory(factory, "model.factory")()), info


def example_for(info: dict[str, Any], input_shape: Sequence[int] | None) -> torch.Tensor:
    """An input for export: of ``input_shape``, else of the example input the run recorded."""
    if input_shape is not None:
        return torch.randn(*input_shape)
    record = info.get("example_input")
    if not record:
        raise LcpressError("the run did not record its input shape; give one, e.g. --input-shape 1,3,224,224")
    return torch.randn(*record["shape"], dtype=getattr(torch, record["dtype"]))


def export_run(run_dir: str | Path, path: str | Path, *, overwrite: bool = False,
               input_shape: Sequence[int] | None = None, dynamic_batch: bool = True,
               opset: int | None = None) -> Exported:
    """``lcpress export RUN_DIR --onnx PATH``: the run's realized model as ONNX, checked in onnxruntime."""
    path = Path(path)
    if path.exists() and not overwrite:  # before the (slow) export, and before loading anything
        raise FileExistsError(f"{str(path)!r} exists; pass --force to replace it")
    model, info = load_run_model(run_dir)
    torch.manual_seed(0)
    return export_onnx(model, path, example_for(info, input_shape), overwrite=overwrite,
                       dynamic_batch=dynamic_batch, opset=opset)
