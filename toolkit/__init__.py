"""lcpress — compress trained PyTorch models with the learning–compression (LC) algorithm.

One call does the whole job::

    import lcpress
    result = lcpress.compress(model, "config.yaml", train_fn=my_l_step, eval_fn=my_accuracy)
    result.model            # realized: thin layers, actually smaller and faster
    lcpress.save(result.model, "model.safetensors")

Schemes (low rank, …) and cost models (params, FLOPs, …) are plugins; see
``lcpress plugins`` and docs/plugins.md.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("lcpress")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from .errors import CheckpointError, ConfigError, LcpressError, PluginError, RunDirectoryError
from .hookspecs import hookimpl
from .options import Options, option
from .forms import Dense, Form, LayerSpec, LowRank
from .scheme import Candidates, CStepContext, Scheme, State
from .costmodel import CostModel
from .config import LCConfig, ScheduleConfig, TargetConfig, TaskConfig, TrainConfig, load_config
from .engine import LCEngine, LStep
from .api import CompressionResult, compress
from .modelfile import load, save
from .export import export_onnx
from .registry import get_registry

__all__ = [
    "__version__",
    "compress", "save", "load", "export_onnx", "CompressionResult",
    "LCConfig", "TaskConfig", "TargetConfig", "ScheduleConfig", "TrainConfig", "load_config",
    "hookimpl", "Scheme", "State", "Candidates", "CStepContext", "CostModel", "Options", "option",
    "Form", "Dense", "LowRank", "LayerSpec", "LCEngine", "LStep", "get_registry",
    "LcpressError", "ConfigError", "PluginError", "CheckpointError", "RunDirectoryError",
]
