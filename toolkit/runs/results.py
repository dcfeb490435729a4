"""What a finished run directory gives back: its realized model, loaded or exported.

``lcpress export RUN_DIR --onnx model.onnx`` rebuilds the run's realized model
from its ``model.safetensors`` (without pickle) and writes it as ONNX,
checked in onnxruntime.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lcpress.config import parse_config
from lcpress.errors import CheckpointError, ConfigError, LcpressError
from lcpress.io.export import Exported, export_onnx
from lcpress.io.modelfile import load, read_manifest
from lcpress.io.rundir import MODEL_FILE, RUN_INFO, RunDirectory
from lcpress.runs.sources import call_factory

log = logging.getLogger("lcpress.results")


def load_run_model(run_dir: str | Path, config: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The realized model of a finished run directory, and its ``run.json``.

    Models built only from allow-listed classes are rebuilt from the file —
    nothing runs but lcpress. Others need their class: from the
    ``model.factory`` of the config file ``config`` that the caller names
    (imported from that file's folder), never from what the run directory
    says: a run directory received from someone else is opened without
    executing anything it holds or names.
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
    parsed = parse_config(config) if config is not None else None  # a config named is read, even when not needed
    if manifest.get("architecture") is not None:
        if parsed is not None:
            log.info("%s rebuilds from its file alone; its factory in %s is not run", model_file, config)
        return load(model_file), info
    classes = ", ".join(manifest.get("not_rebuildable", []))
    if config is None:
        raise LcpressError(
            f"{str(model_file)!r} holds classes lcpress cannot rebuild on its own ({classes}); name the config whose "
            f"model.factory builds the architecture: --config path/to/config.yaml (lcpress imports it from that "
            f"file's folder, and never from the run directory), or export from Python: "
            f"lcpress.export_onnx(lcpress.load(path, model=MyNet()), 'model.onnx', example_input)")
    if parsed.model is None or parsed.model.factory is None:
        raise ConfigError(f"{config}: its model section names no factory, so it cannot build the architecture of "
                          f"{str(model_file)!r} ({classes})")
    architecture = call_factory(parsed.model.factory, "model.factory", parsed.base_dir)
    return load(model_file, model=architecture), info


#: The largest recorded example input export builds (an edited run.json must not allocate terabytes).
MAX_EXAMPLE_VALUES = 1 << 28


def example_for(info: dict[str, Any], input_shape: Sequence[int] | None) -> torch.Tensor:
    """An input for export: of the example input the run recorded, or of ``input_shape`` in the recorded dtype.

    Integer inputs (token ids) are zeros, an index every table holds; real-valued ones are drawn at random.
    """
    record = info.get("example_input")
    dtype = _recorded_dtype(record)
    if input_shape is not None:
        return _filled(list(input_shape), dtype or torch.float32)
    try:
        shape = [int(s) for s in record["shape"]]
        if dtype is None or not shape or min(shape) < 1 or len(shape) > 8 or math.prod(shape) > MAX_EXAMPLE_VALUES:
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise LcpressError("the run did not record a usable input shape; give one, e.g. --input-shape 1,3,224,224") \
            from None
    return _filled(shape, dtype)


def _recorded_dtype(record: Any) -> torch.dtype | None:
    dtype = getattr(torch, str(record.get("dtype")), None) if isinstance(record, dict) else None
    return dtype if isinstance(dtype, torch.dtype) else None


def _filled(shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(*shape, dtype=dtype)
    return torch.zeros(*shape, dtype=dtype)


def export_run(run_dir: str | Path, path: str | Path, *, overwrite: bool = False,
               input_shape: Sequence[int] | None = None, dynamic_batch: bool = True,
               opset: int | None = None, config: str | Path | None = None) -> Exported:
    """``lcpress export RUN_DIR --onnx PATH``: the run's realized model as ONNX, checked in onnxruntime."""
    path = Path(path)
    if path.exists() and not overwrite:  # before the (slow) export, and before loading anything
        raise FileExistsError(f"{str(path)!r} exists; pass --force to replace it")
    model, info = load_run_model(run_dir, config)
    torch.manual_seed(0)
    return export_onnx(model, path, example_for(info, input_shape), overwrite=overwrite,
                       dynamic_batch=dynamic_batch, opset=opset)
