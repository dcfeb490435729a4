"""The run configuration: one YAML file → validated dataclasses.

Every key has a default, a help line and, where it has one, its range;
``lcpress options`` prints them. :func:`parse_config` checks the structure —
unknown keys, types, ranges — with the key path in every message
(``tasks[1].target.ratio``). Plugin names and plugin options are resolved
once, by :func:`lcpress.core.plan.resolve` (``lcpress.load_config`` does
both); layer names are checked against the model when the run is planned.
All of it happens before any training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from lcpress.errors import ConfigError
from lcpress.options import Options, option


@dataclass
class TargetConfig(Options):
    """A budget for a task group, instead of a hand-tuned α."""

    cost: str = option("flops", help="cost model whose total over the group's layers is bounded")
    ratio: float | None = option(None, help="fraction of the group's dense cost, e.g. 0.25", gt=0, le=1)
    value: float | None = option(None, help="absolute bound, in the cost model's unit", gt=0)

    def validate(self) -> None:
        if (self.ratio is None) == (self.value is None):
            self.fail("ratio", "give exactly one of 'ratio' and 'value'")

    @classmethod
    def hint(cls, key: str, value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # `flops: 0.3`: a cost model's name
            return f"a target names its cost model: {{cost: {key}, ratio: {value}}}"
        return super().hint(key, value)

    @classmethod
    def scalar_hint(cls, value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (f"write {{ratio: {value}}} (a fraction of the dense cost under the task's cost model) or "
                    f"{{cost: flops, ratio: {value}}}")
        return None


@dataclass
class TaskConfig(Options):
    """Which layers to compress, how, and at what price."""

    layers: list[str] = option(help="layer names or glob patterns (fnmatch), e.g. ['features.*', 'fc1']")
    scheme: str = option("low_rank", help="registered scheme name (`lcpress plugins` lists them)")
    options: dict[str, Any] = option(default_factory=dict, help="the scheme's options")
    cost: str = option("flops", help="cost model C(θ) of the C step's objective")
    alpha: float = option(0.0, help="weight α of the cost in the C step: α·C(θ) + μ/2·error", ge=0)
    target: TargetConfig | None = option(None, help="global budget instead of α: {cost, ratio | value}")
    normalize: bool = option(False, help="divide each layer's error by ‖W‖² so one α fits layers of any scale")
    exclude: list[str] = option(default_factory=list, help="names or globs to leave out of 'layers'")
    shared: bool = option(False, help="compress all matched layers as one vector (one codebook / budget)")

    @classmethod
    def hint(cls, key: str, value: Any) -> str | None:
        if key in ("ratio", "value"):
            return f"a budget goes under target: {{{key}: {value!r}}}"
        return (f"if it is an option of the scheme, it goes under options: {{{key}: {value!r}}}; `lcpress "
                f"plugins --options` lists each scheme's")

    def validate(self) -> None:
        if not self.layers:
            self.fail("layers", "name at least one layer or glob")
        if self.target is not None and self.alpha:
            self.fail("alpha", "give either 'alpha' or 'target', not both")


@dataclass
class ScheduleConfig(Options):
    """The penalty path: μ_1 = mu0, μ_k = μ_{k−1} · factor (docs/budgets.md: choosing a schedule)."""

    mu0: float | Literal["auto"] = option(
        "auto", help="first penalty μ_0, also used to select forms in the direct-compression step; auto: the "
                     "training loss's gradient norm at the directly compressed weights over their distance to "
                     "the trained ones, so the first L step already pulls", gt=0)
    factor: float | Literal["auto"] = option(
        "auto", help="μ grows by this factor per LC step (at least 1); auto: by what brings ‖w − Δ(θ)‖ to "
                     "'tolerance' by the last step, read again after every step", ge=1)
    steps: int = option(20, help="number of LC steps (L step + C step); 0 = direct compression only", ge=0)
    tolerance: float = option(0.01, help="factor: auto aims at ‖w − Δ(θ)‖ ≤ tolerance·‖Δ(θ)‖ after the last step; a "
                                         "run ending above 10× this is reported as not converged", gt=0, lt=1)
    augmented_lagrangian: bool = option(False, help="keep multipliers λ (augmented Lagrangian) instead of the plain penalty")
    dc_mu: float | None = option(None, help="μ of the direct-compression step (default: mu0); 0 = the LC toolkit's: "
                                            "forms chosen by cost alone (the cheapest), which the first L step then "
                                            "trains the weights towards", ge=0)


@dataclass
class TrainConfig(Options):
    """The built-in supervised L step (used when no train_fn is given)."""

    SYNONYMS = {"learning_rate": "lr", "lr_base": "lr", "decay": "lr_decay", "gamma": "lr_decay",
                "n_epochs": "epochs", "optim": "optimizer"}

    epochs: int = option(1, help="epochs per L step", ge=0)
    first_epochs: int | None = option(None, help="epochs of the first L step (default: 'epochs')", ge=0)
    lr: float = option(0.01, help="learning rate of the first L step", gt=0)
    lr_decay: float = option(0.98, help="learning rate of L step k is lr · lr_decay^k", gt=0, le=1)
    optimizer: Literal["sgd", "adam"] = option("sgd", help="optimizer")
    momentum: float = option(0.9, help="SGD momentum")
    nesterov: bool = option(True, help="Nesterov momentum (SGD)")
    weight_decay: float = option(0.0, help="weight decay")
    loss: Literal["cross_entropy", "mse", "cosine"] = option(
        "cross_entropy", help="loss of output vs target: cross_entropy (classes; per token for (batch, tokens, vocabulary) "
                                  "logits, targets of -100 ignored), mse or cosine (1 − cos; distilling embeddings)"
    )


@dataclass
class FinetuneConfig(Options):
    """Training the realized model after the last LC step: its thin layers themselves, no penalty."""

    steps: int = option(0, help="passes of the L step's training over the realized model, without the penalty "
                                "(train.epochs epochs each with the built-in trainer, or one call of your train_fn); "
                                "the learning rate keeps decaying from the last LC step unless lr is set; layers stored "
                                "quantized or sparse keep their stored values and train their bias only; 0 = none",
                        ge=0)
    lr: float | None = option(None, help="learning rate of the first fine-tuning pass (then · train.lr_decay per "
                                         "pass) with the built-in trainer; thin layers trained directly often want a "
                                         "smaller one than the L steps (default: keep decaying from the last LC step)",
                              gt=0)


@dataclass
class BatchNormConfig(Options):
    """BatchNorm statistics of the compressed weights (their running mean and variance are the dense model's)."""

    recalibrate: bool = option(True, help="re-estimate BatchNorm running statistics for Δ(θ) before every evaluation "
                                          "and before the model is saved, from training batches (no gradients)")
    batches: int = option(100, help="training batches per re-estimation (fewer if the loader has fewer)", ge=1)


@dataclass
class ModelConfig(Options):
    """Where the CLI gets the model from (the Python API takes the model object)."""

    builtin: Literal["digits_cnn"] | None = option(None, help="a model lcpress ships (trained on first use)")
    factory: str | None = option(None, help="'module:function' returning an nn.Module")
    weights: str | None = option(None, help="trained weights: .safetensors, or a .pt state dict (loaded weights_only); one inside a training checkpoint (under 'model', 'state_dict' …) or with a wrapper's 'module.' prefix is found; an lcpress model file (a run's model.safetensors) brings its realized layers, to compress a compressed model again")
    pretrain_epochs: int = option(30, help="epochs to train a builtin model that has no weights yet", ge=0)

    def validate(self) -> None:
        if (self.builtin is None) == (self.factory is None):
            self.fail("builtin", "give exactly one of 'builtin' and 'factory'")


@dataclass
class DataConfig(Options):
    """Where the CLI gets its data from."""

    builtin: Literal["digits"] | None = option(None, help="a data set lcpress ships (scikit-learn digits)")
    factory: str | None = option(None, help="'module:function' returning (train_loader, eval_loader)")
    batch_size: int = option(64, help="batch size of the built-in data sets", ge=1)

    def validate(self) -> None:
        if (self.builtin is None) == (self.factory is None):
            self.fail("builtin", "give exactly one of 'builtin' and 'factory'")


@dataclass
class SweepConfig(Options):
    """`lcpress sweep`: one run per budget, drawn as an accuracy–cost curve."""

    targets: list[float] = option(default_factory=list, help="target ratios, one run each (--targets overrides)",
                                  gt=0, le=1)
    baseline: bool = option(False, help="also run uniform-ratio truncated SVD at each target, fine-tuned as long as LC trains")


@dataclass
class LCConfig(Options):
    """A whole compression run."""

    tasks: list[TaskConfig] = option(help="what to compress; each entry is one task group")
    schedule: ScheduleConfig = option(default_factory=ScheduleConfig, help="μ schedule")
    train: TrainConfig = option(default_factory=TrainConfig, help="built-in L-step trainer")
    finetune: FinetuneConfig = option(default_factory=FinetuneConfig,
                                      help="training of the realized model after the LC steps (steps: 0 = none)")
    batchnorm: BatchNormConfig = option(default_factory=BatchNormConfig,
                                        help="BatchNorm statistics re-estimated for the compressed weights")
    model: ModelConfig | None = option(None, help="model source (CLI)")
    data: DataConfig | None = option(None, help="data source (CLI)")
    cost_models: dict[str, Any] = option(default_factory=dict,
                                         help="options per cost model, e.g. {cpu_latency: {batch_size: 64, threads: 4}}")
    seed: int = option(0, help="seed of every random choice (data order, C-step generators)")
    calibration_batches: int = option(
        16, help="batches of training data run forward before the direct compression to collect layer inputs, for "
                 "schemes that measure error on layer outputs (low_rank error: output)", ge=1)
    output_dir: str | None = option(None, help="run directory for checkpoints, history, report and model (relative to "
                                               "base_dir); lcpress compress on the CLI needs one (or --output-dir)")
    base_dir: str | None = option(None, help="folder that relative paths (output_dir, model.weights) and "
                                             "'module:function' factories resolve against; default: the config file's "
                                             "folder, or the current directory for a config given as a mapping")
    device: str = option("cpu", help="'cpu' or 'cuda' (or 'cuda:N')")
    checkpoint: bool = option(True, help="checkpoint after every LC step (needs output_dir)")
    metric: Literal["accuracy", "cosine"] = option(
        "accuracy", help="what the built-in evaluation measures on the eval loader: top-1 accuracy, or mean cosine "
                         "similarity of outputs to targets (embeddings)"
    )
    sweep: SweepConfig = option(default_factory=SweepConfig, help="`lcpress sweep`: targets and baseline")

    def path(self, value: str | Path) -> Path:
        """``value`` as a path: relative ones are relative to ``base_dir`` (when set)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() or self.base_dir is None else Path(self.base_dir) / path

    def validate(self) -> None:
        if not self.tasks:
            self.fail("tasks", "give at least one task")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            self.fail("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")


def parse_config(source: str | Path | dict[str, Any] | LCConfig) -> LCConfig:
    """Parse a config (YAML path, dict, or LCConfig) and check its structure, types and ranges.

    Plugin names and options are not looked at here: :func:`lcpress.load_config`
    resolves them too.
    """
    if isinstance(source, LCConfig):  # built in code, it skipped from_dict's checks: a dict inside it, a "4"
        return LCConfig.from_dict(source.to_dict())
    if isinstance(source, (str, Path)):
        return LCConfig.from_dict(config_file(source))
    return LCConfig.from_dict(source)


def config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds, with ``base_dir`` set to the file's folder unless the file sets it."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (tasks:, schedule: …), not a {type(data).__name__}")
    data = dict(data)
    folder = Path(path).resolve().parent
    data["base_dir"] = str(folder / data["base_dir"]) if isinstance(data.get("base_dir"), str) else str(folder)
    return data


def read_yaml(path: str | Path) -> Any:
    """The parsed content of a YAML config file, or a :class:`ConfigError` that names the file.

    A key given twice in one mapping is an error (plain YAML loaders keep the
    last one silently), and so is a file that is not text.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" if not path.exists()
                          else f"config file {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:  # its marks name "<unicode string>": the file is named in front instead
        where = str(exc).replace(' in "<unicode string>",', " at")
        raise ConfigError(f"{path}: not valid YAML: {where}") from None
    if _expands_past(data, MAX_CONFIG_VALUES):
        raise ConfigError(f"{path}: the config expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases "
                          f"repeating a collection inside collections); a config holds a few hundred")
    return data


#: The most values a config may expand to. Aliases share one collection in memory, but every message, record
#: and copy of the config spells each use out: nine aliases nested eight deep make 43 million.
MAX_CONFIG_VALUES = 100_000


def _expands_past(data: Any, limit: int) -> bool:
    """Whether ``data``, each alias spelled out, holds more than ``limit`` values (counted without expanding)."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *shared`: merged keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the SafeLoader itself refuses unhashable keys, clearly
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line "
                                f"{seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def sections() -> list[tuple[str, type[Options]]]:
    """(title, options class) of the top level and every section, nested ones included, in file order."""
    found: list[tuple[str, type[Options]]] = []

    def walk(title: str, cls: type[Options]) -> None:
        found.append((title, cls))
        for name, child, many in _sections_of(cls):
            key = name + ("[]" if many else "")
            walk(key if title == "(top level)" else f"{title}.{key}", child)

    walk("(top level)", LCConfig)
    return found


def _sections_of(cls: type[Options]) -> list[tuple[str, type[Options], bool]]:
    """(field, Options class, is a list) for the fields of ``cls`` that hold another section."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        many = get_origin(tp) is list
        for arg in (tp, *get_args(tp)):
            if isinstance(arg, type) and issubclass(arg, Options):
                out.append((f.name, arg, many))
                break
    return out
