"""Export realized models to ONNX, for onnxruntime and other inference engines.

:func:`export_onnx` writes any model (dense or realized: factorized
Linear/Conv pairs, ``PointwiseConv2d``, ``GroupedLinear``, grouped convs …)
through torch's ``torch.export``-based ONNX exporter, as one self-contained
file with a dynamic batch dimension, and checks the file in onnxruntime against
torch. (:func:`lcpress.runs.results.export_run` does the same for a finished
run directory: ``lcpress export RUN_DIR --onnx model.onnx``.)

Layers that decode packed codes in their forward pass (``DecodedLinear``,
``DecodedConv2d``, ``DecodedEmbedding``: the quantized and sparse parts) are exported as the plain
Linear/Conv2d/Embedding they decode to, holding the decoded weight: ONNX has no use for
bit unpacking at inference time, so those layers run at dense speed and are
stored dense in the file.

Needs the ``[onnx]`` extra (onnx, onnxscript; onnxruntime for the check).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lcpress.atomic import replacing
from lcpress.core.surgery import first_tensor, replace_module, unwrapped
from lcpress.errors import LcpressError
from lcpress.nn.codecs import DecodedLayer

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
    if path.is_dir():
        raise LcpressError(f"{str(path)!r} is a directory; give the file to write, e.g. {str(path / 'model.onnx')!r}")
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
    model = unwrapped(model)  # torch.export cannot trace torch.compile's or DataParallel's wrapper; what they hold exports
    source = model
    was_training = model.training
    model.eval()
    model = decoded_copy(model)
    try:
        _refuse_unfit_input(model, example_input)
        x = example_input
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            if x.shape[0] == 1:  # torch.export fixes size-1 dimensions; trace with two samples
                x = torch.cat([x, x])
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        error = None
        with replacing(path) as tmp:  # written, cleaned and checked before it takes the name: a failure leaves none
            _export(model, x, tmp, opset, dynamic_batch, kwargs)
            _strip_source_paths(tmp)
            if check and not missing_packages():
                error = _checked(tmp, model, example_input)
        return Exported(path, error)
    finally:
        source.train(was_training)


def _export(model: nn.Module, x: torch.Tensor, tmp: Path, opset: int | None, dynamic_batch: bool,
            kwargs: dict[str, Any]) -> None:
    """torch's exporter into ``tmp``; its failures as one :class:`LcpressError`."""
    try:
        with _quiet_exporter():
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                              input_names=["input"], output_names=["output"], verbose=False, **kwargs)
        _refuse_other_opset(tmp, opset)
    except LcpressError:
        raise
    except Exception as exc:
        hint = " (or export with dynamic_batch=False / --static-batch)" if dynamic_batch else ""
        said = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter colours its text for a terminal
        raise LcpressError(f"torch could not export the model to ONNX{hint}: {type(exc).__name__}: {said}") from exc


def _strip_source_paths(path: Path) -> None:
    """Drop the Python stack traces the exporter writes on every node: they name files of this machine (a
    user's home, a project's path) in a file meant to be shipped, and are often larger than a small model."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graphs = [proto.graph, *[f for f in proto.functions]]
    changed = False
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            if len(kept) != len(node.metadata_props):
                changed = True
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attribute in node.attribute:  # the bodies of If, Loop, Scan
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    if changed:
        onnx.save(proto, str(path))


def _checked(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    """onnxruntime's largest difference from torch on ``x``; a file it cannot run is refused, never written."""
    try:
        return max_abs_difference(path, model, x)
    except Exception as exc:
        raise LcpressError(
            f"onnxruntime cannot run the exported file ({type(exc).__name__}: {str(exc).strip()[:300]}); its CPU "
            f"provider runs float32 and float16 models, not every dtype ({x.dtype} input here): export a float32 "
            f"copy (model.float()), or skip the check (check=False)") from None


def _refuse_unfit_input(model: nn.Module, x: torch.Tensor) -> None:
    """Run the model once on the example: a wrong shape is the user's to fix, not an exporter failure to report."""
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise LcpressError(f"the model does not accept an input of shape {tuple(x.shape)} ({type(exc).__name__}: "
                           f"{exc}); give an example the model takes (CLI: --input-shape)") from None


def _refuse_other_opset(path: Path, opset: int | None) -> None:
    """The exporter falls back to its own opset when it cannot convert to the one asked for: refuse that file."""
    if opset is None:
        return
    import onnx

    written = {entry.domain: entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import}
    if written.get("", written.get("ai.onnx")) != opset:
        raise LcpressError(f"opset {opset} was asked for, but torch's exporter could only write opset "
                           f"{written.get('', written.get('ai.onnx'))}; leave the opset out (CLI: drop --opset) or "
                           f"ask for that one")


def decoded_copy(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it in which every layer that decodes packed codes is the dense layer it decodes to."""
    import copy

    names = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, DecodedLayer)]
    if not names:
        return model
    model = copy.deepcopy(model)
    plain: dict[int, nn.Module] = {}  # one replacement per module, so a layer under two names stays shared
    for name in names:
        module = model.get_submodule(name)
        if id(module) not in plain:
            plain[id(module)] = module.to_dense().eval()
        replace_module(model, name, plain[id(module)])
    return model


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per optional op library it cannot find, and torch.export warns of its own
    deprecations; keep those out of the user's log."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # their failures reach the user as one lcpress error instead
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
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
    expected = first_tensor(model(x)).cpu()
    return float((run_onnx(path, x) - expected).abs().max()) if expected.numel() else 0.0
