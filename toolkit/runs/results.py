"""What a finished run directory gives back: its realized model, loaded or exported.

``lcpress export RUN_DIR --onnx model.onnx`` rebuilds the run's realized model
from its ``model.safetensors`` (without pickle) and writes it as ONNX,
checked in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lcpress.errors import CheckpointError, LcpressError
from lcpress.io.export import Exported, export_onnx
from lcpress.io.modelfile import load, read_manifest
from lcpress.io.rundir import MODEL_FILE, RUN_INFO, RunDirectory
from lcpress.runs.sources import import_factory


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The realized model of a finished run directory, and its ``run.json``.

    Models built only from allow-listed classes are rebuilt from the file;
    others from the run's ``model.factory`` (importable from the current
    directory or ``PYTHONPATH``), with the saved structure swapped in.
    """
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
