"""lcpress — compress trained PyTorch models with the learning–compression (LC) algorithm.

One call does the whole job::

    import lcpress
    result = lcpress.compress(model, "config.yaml", train_fn=my_l_step, eval_fn=my_accuracy)
    result.model            # realized: thin layers, actually smaller and faster
    lcpress.save(result.model, "model.safetensors")

This module is the public surface, with :mod:`lcpress.nn` (the modules
realized models are built from), :mod:`lcpress.linalg` (exact C-step
algebra) and :mod:`lcpress.testing` (the plugins' conformance kit). Names
elsewhere are lcpress's own and may change between versions; the map of the
package is in docs/architecture.md.
"""

from __future__ import annotations

import os as _os
import sys as _sys

# `python -m lcpress` (and `torchrun -m lcpress`) put the current directory first on the import path, and this
# package's own imports (yaml, pandas, torch …) run before __main__ could remove it: a `yaml.py` in the folder a
# run is started from would run first. While the package is imported for -m, argv[0] is "-m".
if _sys.argv[:1] == ["-m"]:
    _sys.path[:] = [p for p in _sys.path if p not in ("", _os.getcwd())]

from lcpress.version import __version__  # noqa: E402

# errors
from lcpress.errors import (CheckpointError, ConfigError, CStepError, FileWriteError, LcpressError, PartError,
                            PluginContractError, PluginError, RunDirectoryError)

# the config
from lcpress.options import Options, option
from lcpress.config import (DataConfig, FinetuneConfig, LCConfig, ModelConfig, ScheduleConfig, SweepConfig,
                            TargetConfig, TaskConfig, TrainConfig)
from lcpress.core.plan import load_config

# the plugin contract: schemes, forms, cost models, hooks, registry
from lcpress.hookspecs import hookimpl
from lcpress.core.forms import Dense, Form, LayerSpec, LowRank, Resized
from lcpress.core.scheme import Binding, Candidates, Coupled, CStepContext, Scheme, State
from lcpress.core.channels import ChannelGroup, ChannelGroups, Slice, channel_groups, kept_sizes
from lcpress.core.moments import OutputError
from lcpress.core.parts import PartOptions, Parts
from lcpress.core.costmodel import CostModel
from lcpress.core.measured import MeasuredCostModel, form_module, timing_input
from lcpress.core.registry import get_registry, using_plugins

# running: the one-call API and what it is built from
from lcpress.core.engine import LCEngine, LStep
from lcpress.core.graph import ModelGraph, spec_of, trace
from lcpress.core.surgery import get_module, replace_module
from lcpress.runs.compress import CompressionResult, compress
from lcpress.runs.sweep import SweepResult, sweep
from lcpress.runs.preview import predict_costs, profile_costs
from lcpress.runs.training import SupervisedTrainer, accuracy, mean_cosine

# files and reports
from lcpress.io.modelfile import load, save
from lcpress.io.export import export_onnx
from lcpress.reporting.report import write_report
from lcpress.reporting.runinfo import RunSummary, read_run
from lcpress.reporting.tables import format_table

__all__ = [
    "__version__",
    # the one-call API
    "compress", "CompressionResult", "sweep", "SweepResult", "profile_costs", "predict_costs",
    "save", "load", "export_onnx", "write_report", "read_run", "RunSummary", "format_table",
    # configs
    "load_config", "LCConfig", "TaskConfig", "TargetConfig", "ScheduleConfig", "TrainConfig", "FinetuneConfig",
    "ModelConfig", "DataConfig", "SweepConfig", "Options", "option",
    # plugin contract
    "hookimpl", "Scheme", "State", "Candidates", "CStepContext", "OutputError", "PartOptions", "Parts",
    "Coupled", "Binding", "Form", "Dense", "LowRank", "Resized", "LayerSpec", "CostModel", "MeasuredCostModel", "form_module", "timing_input",
    "get_registry", "using_plugins",
    # building blocks of a run
    "LCEngine", "LStep", "ModelGraph", "trace", "spec_of",
    "channel_groups", "ChannelGroups", "ChannelGroup", "Slice", "kept_sizes", "get_module", "replace_module", "SupervisedTrainer", "accuracy", "mean_cosine",
    # errors
    "LcpressError", "ConfigError", "PluginError", "CStepError", "PartError", "PluginContractError", "CheckpointError",
    "RunDirectoryError", "FileWriteError",
]

# the built-in example (scikit-learn's digits, shipped inside scikit-learn): data, model, dense training
from lcpress.runs.demo import digits_cnn, digits_loaders, train_dense  # noqa: E402

__all__ += ["digits_cnn", "digits_loaders", "train_dense"]
