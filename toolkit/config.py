"""The run configuration: one YAML file → validated dataclasses.

Every key has a default and a help line; ``lcpress config-help`` prints them.
:func:`load_config` fails before any training on an unknown key, a bad value,
an unknown scheme or cost model, or scheme options the scheme rejects — each
error names the key path (``tasks[1].options.rank``) and what is allowed.
Layer names are checked against the model when the run is planned, still
before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, PluginError
from .options import Options, option


@dataclass
class TargetConfig(Options):
    """A budget for a task group, instead of a hand-tuned α."""

    cost: str = option("flops", help="cost model whose total over the group's layers is bounded")
    ratio: float | None = option(None, help="fraction of the group's dense cost, e.g. 0.25")
    value: float | None = option(None, help="absolute bound, in the cost model's unit")

    def validate(self) -> None:
        if (self.ratio is None) == (self.value is None):
            self.fail("ratio", "give exactly one of 'ratio' and 'value'")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            self.fail("ratio", f"must be in (0, 1], got {self.ratio}")
        if self.value is not None and self.value <= 0:
            self.fail("value", f"must be positive, got {self.value}")


@dataclass
class TaskConfig(Options):
    """Which layers to compress, how, and at what price."""

    layers: list[str] = option(help="layer names or glob patterns (fnmatch), e.g. ['features.*', 'fc1']")
    scheme: str = option("low_rank", help="registered scheme name (`lcpress plugins` lists them)")
    options: dict[str, Any] = option(default_factory=dict, help="the scheme's options")
    cost: str = option("flops", help="cost model C(θ) of the C step's objective")
    alpha: float = option(0.0, help="weight α of the cost in the C step: α·C(θ) + μ/2·error")
    target: TargetConfig | None = option(None, help="global budget instead of α: {cost, ratio | value}")
    normalize: bool = option(False, help="divide each layer's error by ‖W‖² so one α fits layers of any scale")
    exclude: list[str] = option(default_factory=list, help="names or globs to leave out of 'layers'")
    shared: bool = option(False, help="compress all matched layers as one vector (one codebook / budget)")

    def validate(self) -> None:
        if not self.layers:
            self.fail("layers", "name at least one layer or glob")
        if self.alpha < 0:
            self.fail("alpha", f"must be non-negative, got {self.alpha}")
        if self.target is not None and self.alpha:
            self.fail("alpha", "give either 'alpha' or 'target', not both")


@dataclass
class ScheduleConfig(Options):
    """The penalty path μ_k = mu0 · factor^k."""

    mu0: float = option(1e-3, help="first penalty μ_0 (also used to select forms in the direct-compression step)")
    factor: float = option(1.1, help="μ grows by this factor per LC step")
    steps: int = option(20, help="number of LC steps (L step + C step); 0 = direct compression only")
    augmented_lagrangian: bool = option(False, help="keep multipliers λ (augmented Lagrangian) instead of the plain penalty")

    def validate(self) -> None:
        if self.mu0 <= 0:
            self.fail("mu0", f"must be positive, got {self.mu0}")
        if self.factor < 1:
            self.fail("factor", f"must be at least 1 (μ must not shrink), got {self.factor}")
        if self.steps < 0:
            self.fail("steps", f"must be non-negative, got {self.steps}")

    def mu(self, step: int) -> float:
        return self.mu0 * self.factor**step


@dataclass
class TrainConfig(Options):
    """The built-in supervised L step (used when no train_fn is given)."""

    epochs: int = option(1, help="epochs per L step")
    first_epochs: int | None = option(None, help="epochs of the first L step (default: 'epochs')")
    lr: float = option(0.01, help="learning rate of the first L step")
    lr_decay: float = option(0.98, help="learning rate of L step k is lr · lr_decay^k")
    optimizer: Literal["sgd", "adam"] = option("sgd", help="optimizer")
    momentum: float = option(0.9, help="SGD momentum")
    nesterov: bool = option(True, help="Nesterov momentum (SGD)")
    weight_decay: float = option(0.0, help="weight decay")
    loss: Literal["cross_entropy", "mse", "cosine"] = option(
        "cross_entropy", help="loss of output vs target: cross_entropy (classes), mse or cosine (1 − cos; distilling embeddings)"
    )

    def validate(self) -> None:
        if self.epochs < 0:
            self.fail("epochs", f"must be non-negative, got {self.epochs}")
        if self.first_epochs is not None and self.first_epochs < 0:
            self.fail("first_epochs", f"must be non-negative, got {self.first_epochs}")
        if self.lr <= 0:
            self.fail("lr", f"must be positive, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            self.fail("lr_decay", f"must be in (0, 1], got {self.lr_decay}")


@dataclass
class FinetuneConfig(Options):
    """Training the realized model after the last LC step: its thin layers themselves, no penalty."""

    steps: int = option(0, help="passes of the L step's training over the realized model, without the penalty "
                                "(train.epochs epochs each with the built-in trainer, or one call of your train_fn); "
                                "the learning rate keeps decaying from the last LC step; 0 = none")

    def validate(self) -> None:
        if self.steps < 0:
            self.fail("steps", f"must be non-negative, got {self.steps}")


@dataclass
class ModelConfig(Options):
    """Where the CLI gets the model from (the Python API takes the model object)."""

    builtin: Literal["digits_cnn"] | None = option(None, help="a model lcpress ships (trained on first use)")
    factory: str | None = option(None, help="'module:function' returning an nn.Module")
    weights: str | None = option(None, help="trained weights: .safetensors, or a state_dict .pt (loaded weights_only)")
    pretrain_epochs: int = option(30, help="epochs to train a builtin model that has no weights yet")

    def validate(self) -> None:
        if (self.builtin is None) == (self.factory is None):
            self.fail("builtin", "give exactly one of 'builtin' and 'factory'")


@dataclass
class DataConfig(Options):
    """Where the CLI gets its data from."""

    builtin: Literal["digits"] | None = option(None, help="a data set lcpress ships (scikit-learn digits)")
    factory: str | None = option(None, help="'module:function' returning (train_loader, eval_loader)")
    batch_size: int = option(64, help="batch size of the built-in data sets")

    def validate(self) -> None:
        if (self.builtin is None) == (self.factory is None):
            self.fail("builtin", "give exactly one of 'builtin' and 'factory'")
        if self.batch_size < 1:
            self.fail("batch_size", f"must be at least 1, got {self.batch_size}")


@dataclass
class SweepConfig(Options):
    """`lcpress sweep`: one run per budget, drawn as an accuracy–cost curve."""

    targets: list[float] = option(default_factory=list, help="target ratios, one run each (--targets overrides)")
    baseline: bool = option(False, help="also run uniform-ratio truncated SVD at each target, fine-tuned as long as LC trains")

    def validate(self) -> None:
        for i, t in enumerate(self.targets):
            if not 0 < t <= 1:
                self.fail("targets", f"entry {i} must be in (0, 1], got {t}")


@dataclass
class LCConfig(Options):
    """A whole compression run."""

    tasks: list[TaskConfig] = option(help="what to compress; each entry is one task group")
    schedule: ScheduleConfig = option(default_factory=ScheduleConfig, help="μ schedule")
    train: TrainConfig = option(default_factory=TrainConfig, help="built-in L-step trainer")
    finetune: FinetuneConfig = option(default_factory=FinetuneConfig,
                                      help="training of the realized model after the LC steps (steps: 0 = none)")
    model: ModelConfig | None = option(None, help="model source (CLI)")
    data: DataConfig | None = option(None, help="data source (CLI)")
    cost_models: dict[str, Any] = option(default_factory=dict,
                                         help="options per cost model, e.g. {cpu_latency: {batch_size: 64, threads: 4}}")
    seed: int = option(0, help="seed of every random choice (data order, C-step generators)")
    output_dir: str | None = option(None, help="run directory for checkpoints, history, report and model")
    device: str = option("cpu", help="'cpu' or 'cuda' (or 'cuda:N')")
    checkpoint: bool = option(True, help="checkpoint after every LC step (needs output_dir)")
    metric: Literal["accuracy", "cosine"] = option(
        "accuracy", help="what the built-in evaluation measures on the eval loader: top-1 accuracy, or mean cosine "
                         "similarity of outputs to targets (embeddings)"
    )
    sweep: SweepConfig = option(default_factory=SweepConfig, help="`lcpress sweep`: targets and baseline")

    def validate(self) -> None:
        if not self.tasks:
            self.fail("tasks", "give at least one task")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            self.fail("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")


def load_config(source: str | Path | dict[str, Any] | LCConfig) -> LCConfig:
    """Parse and fully validate a config (YAML path, dict, or LCConfig)."""
    if isinstance(source, LCConfig):
        config = source
    else:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        else:
            data = source
        config = LCConfig.from_dict(data)
    check_plugins(config)
    return config


def check_plugins(config: LCConfig) -> None:
    """Resolve every scheme and cost model name and validate scheme options."""
    from .registry import get_registry

    registry = get_registry()
    for name, options in config.cost_models.items():
        try:
            cls = registry.cost_model(name)
        except PluginError as exc:
            raise ConfigError(f"cost_models.{name}: {exc}") from None
        cls.Options.from_dict(options, f"cost_models.{name}")
    for i, task in enumerate(config.tasks):
        where = f"tasks[{i}]"
        try:
            scheme_cls = registry.scheme(task.scheme)
        except PluginError as exc:
            raise ConfigError(f"{where}.scheme: {exc}") from None
        scheme_cls.Options.from_dict(task.options, f"{where}.options")
        for key, name in (("cost", task.cost), ("target.cost", task.target.cost if task.target else None)):
            if name is None:
                continue
            try:
                registry.cost_model(name)
            except PluginError as exc:
                raise ConfigError(f"{where}.{key}: {exc}") from None
        if task.target is not None and not scheme_cls.selects:
            raise ConfigError(
                f"{where}.target: scheme {task.scheme!r} does not choose between forms, so a budget cannot "
                f"steer it; set its options (e.g. a fixed rank) instead, or use a selecting scheme"
            )
