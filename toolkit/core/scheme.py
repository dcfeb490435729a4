"""The base class of compression schemes, and what the C step hands them.

A scheme compresses one tensor ``w`` (a layer's weight, or several layers'
weights as one vector) into a state ``θ`` and decompresses it back to
``Δ(θ)``. Schemes that *choose* between forms (ranks, sparsity levels, codebook
sizes) expose their choice as :class:`Candidates` — forms with their errors —
and let the core pick: the core owns the objective
``α·C(form) + μ/2·error`` and the global-budget bisection, so every selecting
scheme gets cost models and budgets without writing that logic itself.

The dense form is the core's too: when the selection keeps a layer dense, the
core stores the weight itself (:func:`dense_state`) instead of calling
``compress``, and the state-reading methods of every scheme answer for such a
state without running the scheme's code (:meth:`Scheme.__init_subclass__`),
so no scheme needs a "dense" branch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from lcpress.core.forms import Dense, Form, LayerSpec
from lcpress.core.moments import OutputError, input_metric
from lcpress.options import Options

if TYPE_CHECKING:
    from lcpress.core.costmodel import CostModel


@dataclass
class State:
    """Compression parameters ``θ`` of one task.

    ``tensors`` go to safetensors, ``meta`` to JSON, so every state can be
    checkpointed and saved without pickle. Keep ``meta`` to plain JSON values.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "State":
        return State({k: v.to(device) for k, v in self.tensors.items()}, dict(self.meta))


@dataclass
class Candidates:
    """The forms a selecting scheme can produce for one tensor, with their errors.

    ``errors[i]`` is ``‖w − Δ_i‖²`` for ``forms[i]`` (exact, not estimated).
    ``data`` is the scheme's own scratch (e.g. the SVD) that :meth:`Scheme.compress`
    reuses for the chosen form so nothing is computed twice.
    """

    forms: list[Form]
    errors: torch.Tensor
    data: Any = None

    def __post_init__(self) -> None:
        if len(self.forms) != len(self.errors):
            raise ValueError(f"{len(self.forms)} forms but {len(self.errors)} errors")
        if not self.forms:
            raise ValueError("a scheme returned no candidate forms")


@dataclass
class Coupled:
    """The candidates of a task made of several independent choices that resize layers they share.

    Channel pruning is the example: each channel group of a model is one
    *part* (its kept counts, with exact errors), and a layer between two
    groups shrinks with both. ``cuts[p][j]`` says what candidate ``j`` of part
    ``p`` removes from each layer it touches, as ``{layer: (outputs, inputs)}``
    (output rows, input columns). The core prices every part's candidates
    through the layers' cost-model prices in their new shapes and selects by
    α or a global budget (:mod:`lcpress.core.coupled`); ``ctx.choice`` is then
    one candidate index per part. Each part must offer a candidate that cuts
    nothing (dense).
    """

    parts: list[Candidates]
    cuts: list[list[dict[str, tuple[int, int]]]]
    #: coordinate-descent rounds of the selection inside one C step (a layer's price depends on two parts)
    rounds: int = 10
    #: ‖w_p‖² of each part: with ``normalize: true`` each part's errors are divided by it
    scales: list[float] | None = None
    data: Any = None

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.cuts):
            raise ValueError(f"{len(self.parts)} parts but {len(self.cuts)} lists of cuts")
        for part, cuts in zip(self.parts, self.cuts):
            if len(part.forms) != len(cuts):
                raise ValueError(f"{len(part.forms)} forms but {len(cuts)} cuts in one part")
            if not any(not any(o or i for o, i in cut.values()) for cut in cuts):
                raise ValueError("every part needs a candidate that cuts nothing (dense)")


@dataclass
class Binding:
    """What a model-scope scheme (``scope = "model"``) makes one task of: its parameters and priced layers.

    ``sites`` are priced parts of the forward pass that are not modules but change with the scheme's choice
    (the attention products of pruned heads); their cuts in :class:`Coupled` are priced like a layer's.
    """

    params: list[nn.Parameter]
    layers: list[str]
    sites: dict[str, LayerSpec] = field(default_factory=dict)


@dataclass
class CStepContext:
    """Everything a C step may use besides the tensor itself.

    :ivar mu: current penalty parameter μ (μ0 during the direct-compression step).
    :ivar spec: the layer, when the task is one Linear/Conv2d/Embedding layer; else None.
    :ivar cost_model: the task's cost model (prices forms of ``spec``).
    :ivar previous: the task's previous state, for warm starts; None at first.
    :ivar generator: seeded RNG; use it for anything random (k-means init …).
    :ivar step: LC step index (0 is the direct-compression step).
    :ivar candidates: the candidates this scheme returned, when it selects.
    :ivar choice: index into ``candidates.forms`` the core selected.
    :ivar layer: name of the layer (or task) for messages.
    :ivar input_metric: for a scheme that declares :meth:`Scheme.output_error`, the metric Σ (n×n, float64:
        the layer inputs' second moment, normalised and damped) under which the error is
        ``tr((W − Δ) Σ (W − Δ)ᵀ)``, W as an (out, in·kh·kw) matrix; None: weight space (Σ = I).
    """

    mu: float
    cost_model: "CostModel | None" = None
    spec: LayerSpec | None = None
    previous: State | None = None
    generator: torch.Generator | None = None
    step: int = 0
    candidates: "Candidates | Coupled | None" = None
    choice: "int | list[int] | None" = None
    layer: str = ""
    input_metric: torch.Tensor | None = None

    def chosen_form(self) -> Form | None:
        if not isinstance(self.candidates, Candidates) or self.choice is None:
            return None
        return self.candidates.forms[self.choice]

    def chosen_forms(self) -> list[Form] | None:
        """One chosen form per part, when the candidates are :class:`Coupled`."""
        if not isinstance(self.candidates, Coupled) or self.choice is None:
            return None
        return [part.forms[j] for part, j in zip(self.candidates.parts, self.choice)]


#: The layer kinds a scheme may compress (:attr:`Scheme.kinds`), with the class name users know them by.
LAYER_KINDS = {"linear": "Linear", "conv2d": "Conv2d", "embedding": "Embedding"}


def kind_names(kinds: "frozenset[str] | set[str]") -> list[str]:
    """``kinds`` as class names, in :data:`LAYER_KINDS` order (unknown kinds last, as given)."""
    return [LAYER_KINDS[k] for k in LAYER_KINDS if k in kinds] + sorted(k for k in kinds if k not in LAYER_KINDS)


class Scheme(ABC):
    """A compression scheme. Subclass, set ``name`` and ``Options``, register.

    Lifecycle of one C step for a selecting scheme::

        cands = scheme.candidates(w, ctx)        # errors of every form
        ctx.candidates, ctx.choice = cands, core_picks(cands, costs)
        state = scheme.compress(w, ctx)          # θ for the chosen form

    A scheme with nothing to choose returns ``None`` from :meth:`candidates`
    and does its whole C step in :meth:`compress`. When the core chooses
    :class:`Dense`, it keeps the weight itself and does not call
    :meth:`compress` (see the module docstring).
    """

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    #: How a global budget is shared among layers: "sum" minimises the total
    #: error (the LC C step); "minmax" minimises the largest *relative* error
    #: of any layer (ALDS's allocation). A scheme whose options have an
    #: ``allocation`` field lets the user choose: the instance takes the option's value.
    allocation: ClassVar[str] = "sum"
    #: What a target's allocation compares between layers: "error", the C step's error; "measured", the drop of
    #: the run's metric with the layer alone compressed (:mod:`lcpress.core.sensitivity`), measured at
    #: ``sensitivity_points`` candidates per layer. Options with these fields let the user choose.
    sensitivity: ClassVar[str] = "error"
    sensitivity_points: ClassVar[int] = 8
    #: "layer": one task per matched layer (one for all with ``shared: true``). "model": one task for the
    #: task group, whose parameters and layers the scheme chooses in :meth:`bind` (channel pruning reaches
    #: the consumers and norms of the matched layers), realized through :meth:`realize_layers`.
    scope: ClassVar[str] = "layer"
    #: How to make the scheme choose its form (what a ``target`` or ``alpha`` needs), for the message when its
    #: options fix it: low_rank's "leave rank out", quantize's "set k: null". Empty: the scheme never chooses.
    choosing_hint: ClassVar[str] = ""
    #: The kinds of layer (:attr:`LayerSpec.kind`) the scheme compresses. Embedding tables joined Linear and
    #: Conv2d layers after schemes were first written, so a scheme takes them only when it says so: a scheme
    #: whose ``realize`` builds an ``nn.Embedding`` (or whose default realization serves) adds "embedding".
    kinds: ClassVar[frozenset[str]] = frozenset({"linear", "conv2d"})

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self.allocation = getattr(self.options, "allocation", type(self).allocation)  # what the core reads
        self.sensitivity = getattr(self.options, "sensitivity", type(self).sensitivity)
        self.sensitivity_points = getattr(self.options, "sensitivity_points", type(self).sensitivity_points)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Let the core handle the dense form: a subclass's code never sees it.

        ``compress`` of every subclass is wrapped so that a C step whose chosen
        form is :class:`Dense` returns :func:`dense_state`; ``decompress``,
        ``form``, ``layer_forms``, ``encode`` and ``realize`` are wrapped so
        that such a state gets the core's answer (the kept weight,
        :class:`Dense`, the layer holding it). The scheme's own code runs only
        on the forms it offers itself.
        """
        super().__init_subclass__(**kwargs)
        for name, answer in _DENSE_ANSWERS.items():
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "__lcpress_dense_aware__", False):
                setattr(cls, name, _dense_aware(method, answer))
        compress = cls.__dict__.get("compress")
        if callable(compress) and not getattr(compress, "__lcpress_dense_aware__", False):
            cls.compress = _dense_choice_aware(compress)  # type: ignore[method-assign]

    def selecting(self) -> bool:
        """True when, with these options, :meth:`candidates` offers a choice of forms.

        Only a selecting scheme can serve an ``alpha`` trade-off or a global
        ``target``. Default: False. A scheme whose options can fix the form (a
        given rank, a given codebook size) returns False for those options, so
        the ``additive`` scheme can tell fixed parts from selecting ones.
        """
        return False

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        """Why this scheme cannot compress that layer, or None if it can.

        Called while the run is planned, before any training, so a config that
        names a layer the scheme cannot handle fails at once; a layer reached
        only by a glob (``"*"``) is left alone instead, with a warning. Only
        layers of the scheme's :attr:`kinds` reach it.
        """
        return None

    def check_shared(self) -> str | None:
        """Why this scheme cannot compress several layers' weights as one flattened vector, or None if it can.

        ``shared: true`` hands the C step the task group's weights joined into one vector (one codebook over the
        layers, one budget of non-zeros). A scheme that needs one layer's matrix (a factorization, whole rows)
        says so here, and such a config fails while the run is planned, naming ``shared``. Default: None.
        """
        return None

    def refuses(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        """Why this scheme cannot compress that layer (its kind, then :meth:`check_layer`), or None if it can.

        What planning and the conformance kit ask; schemes override :meth:`check_layer`, not this.
        """
        if spec is not None and spec.kind not in self.kinds:
            kinds = kind_names(self.kinds)
            said = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
            return f"{self.name} compresses {said} layers, not {LAYER_KINDS.get(spec.kind, spec.kind)} layers"
        return self.check_layer(spec, module)

    def output_error(self) -> OutputError | None:
        """How to measure error on the layer's outputs, ``‖(W − Δ)X‖²`` over real inputs; None: weight space.

        A scheme that returns an :class:`OutputError` gets the metric Σ of its
        layer's inputs in ``ctx.input_metric`` at every C step, and the engine
        measures the L-step penalty in the same metric (see
        :mod:`lcpress.core.moments`). Its candidates' errors must then be
        ``tr((W − Δ) Σ (W − Δ)ᵀ)``. Per-layer schemes get a metric for
        single-layer tasks only; a model-scope scheme names the layers whose
        inputs it needs (:meth:`moment_layers`) and builds its task's metric
        from them (:meth:`output_metric`). Default: None.
        """
        return None

    def moment_layers(self) -> list[str]:
        """A model-scope scheme with :meth:`output_error`: the layers whose input moments make its metric."""
        return []

    def output_metric(self, moments: dict[str, torch.Tensor], damping: float) -> torch.Tensor:
        """The task's metric from its layers' input ``moments`` (by layer name), for a scheme with :meth:`output_error`.

        Either an (n × n) matrix or, for a diagonal metric, one non-negative weight per entry of the task's
        parameter vector; it reaches the C step as ``ctx.input_metric`` and weighs the L-step penalty.
        Default: a single-layer task's ``Σ`` of its one layer (:func:`lcpress.core.moments.input_metric`); a
        model-scope scheme that watches several layers overrides this.
        """
        if len(moments) != 1:
            raise NotImplementedError(f"scheme {self.name!r} measures error on the outputs of {len(moments)} layers "
                                      f"but has no output_metric() to combine them")
        (moment,) = moments.values()
        return input_metric(moment, damping)

    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Candidates | None:
        """Forms this scheme could produce for ``w``, with exact errors; None if it has no choice."""
        return None

    def candidates_many(self, items: list[tuple[torch.Tensor, CStepContext]]) -> list[Candidates | None]:
        """:meth:`candidates` for many tensors at once (same scheme and options).

        The engine calls this once per C step for all tasks that share a scheme
        configuration, so a scheme can batch its work (the low-rank scheme
        decomposes same-shape matrices in one call). Default: one at a time.
        """
        return [self.candidates(w, ctx) for w, ctx in items]

    @abstractmethod
    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        """The C step: ``θ = argmin ‖w − Δ(θ)‖²`` (for the chosen form, when selecting; never dense)."""

    @abstractmethod
    def decompress(self, state: State) -> torch.Tensor:
        """``Δ(θ)``: a tensor of the same shape and dtype as the ``w`` compressed."""

    def form(self, state: State) -> Form:
        """The form ``state`` takes, for pricing and reports. Default: dense."""
        return Dense()

    def layer_forms(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[Form]:
        """The form of each layer of a multi-layer task (``shared: true``), for pricing and reports.

        ``shapes`` are the layers' weight shapes in task order. A scheme that
        compresses several layers as one vector (one codebook, one global
        sparsity budget) says here what each layer holds. Default: dense for
        every layer (the conservative price).
        """
        return [Dense() for _ in shapes]

    def split(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[State] | None:
        """Per-layer states of a multi-layer task (``shared: true``), so each layer is realized and saved small.

        ``shapes`` are the layers' weight shapes in task order; the i-th state
        must decompress to the i-th layer's part of Δ(θ), and its form is that
        layer's entry of :meth:`layer_forms`. A shared codebook is repeated in
        every layer's state (and counted with every layer it serves). Default:
        None — the layers stay dense modules holding Δ(θ).
        """
        return None

    def encode(self, state: State) -> nn.Module | None:
        """A :class:`lcpress.nn.codecs.WeightCodec` storing ``Δ(θ)`` compactly, for store-small, run-dense schemes.

        Quantization and unstructured pruning return one (packed indices and a
        codebook; values and a mask); their realized layer holds it, and the
        ``additive`` scheme fuses several into one dense-running layer.
        Default: None (the scheme has a structural realization, or none).
        """
        return None

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        """The inference module that computes ``module`` with weight ``Δ(θ)``.

        Default: a copy of ``module`` holding ``Δ(θ)``. Schemes with a faster
        structure (two thin layers, a sparse kernel …) override this. The
        returned module must compute exactly what ``module`` computes with its
        weight replaced by ``Δ(θ)``.
        """
        return holding(module, self.decompress(state))

    def bind(self, model: nn.Module, layers: list[str], example_input: Any) -> Binding:
        """A model-scope scheme's task: the parameters it compresses and the layers it prices.

        Called once while the run is planned, with the matched layer names and
        the example input. The scheme may keep what it learns (e.g. the channel
        groups) for its C steps and realization.
        """
        raise NotImplementedError(f"scheme {self.name!r} has scope 'model' but no bind()")

    def realize_layers(self, state: State, model: nn.Module) -> dict[str, nn.Module]:
        """A model-scope task's realized modules by dotted name (producers, consumers, norms …).

        ``model`` holds Δ(θ) when this is called. The modules returned replace
        the ones at those names and must compute exactly what they computed
        with Δ(θ). Default: none (every layer of the task stays dense).
        """
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self.options, f.name)!r}" for f in dataclasses.fields(self.options))
        return f"{type(self).__name__}({opts})"


def holding(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A copy of ``module`` whose weight is ``weight``: the layer kept dense, computing with Δ(θ)."""
    realized = copy.deepcopy(module)
    with torch.no_grad():
        realized.weight.copy_(weight.reshape(realized.weight.shape))
    return realized


# ------------------------------------------------------------ the dense form
#: The meta key marking a state the core keeps dense. Namespaced: "form" is a natural key for a scheme's own meta.
DENSE_KEY = "__lcpress_dense__"
#: How checkpoints written before :data:`DENSE_KEY` marked a dense state; they still resume (and report).
LEGACY_DENSE_META = {"form": "dense"}


def dense_state(w: torch.Tensor) -> State:
    """θ of a layer the selection keeps dense: the weight itself."""
    return State({"weight": w.detach().clone()}, {DENSE_KEY: True})


def is_dense(state: State | None) -> bool:
    """Whether the core kept this state dense: its marker, or the old one on exactly the state the core wrote.

    A scheme's own state may say ``"form": "dense"`` freely: only a state holding nothing but ``weight`` with
    that one meta entry — what a dense state was in an older checkpoint — is read as the core's.
    """
    if state is None:
        return False
    return state.meta.get(DENSE_KEY) is True or (state.meta == LEGACY_DENSE_META and set(state.tensors) == {"weight"})


#: What each state-reading method of a scheme answers for a dense state, without asking the scheme.
_DENSE_ANSWERS: dict[str, Callable[..., Any]] = {
    "decompress": lambda state: state.tensors["weight"],
    "form": lambda state: Dense(),
    "layer_forms": lambda state, shapes: [Dense() for _ in shapes],
    "encode": lambda state: None,
    "realize": lambda state, module: holding(module, state.tensors["weight"]),
    "split": lambda state, shapes: [dense_state(part.reshape(shape)) for part, shape in
                                    zip(torch.split(state.tensors["weight"].reshape(-1),
                                                    [math.prod(s) for s in shapes]), shapes)],
}


def _dense_aware(method: Callable[..., Any], answer: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Scheme, state: State, *args: Any) -> Any:
        return answer(state, *args) if is_dense(state) else method(self, state, *args)

    wrapper.__lcpress_dense_aware__ = True  # type: ignore[attr-defined]
    return wrapper


def _dense_choice_aware(compress: Callable[..., State]) -> Callable[..., State]:
    @functools.wraps(compress)
    def wrapper(self: Scheme, w: torch.Tensor, ctx: CStepContext) -> State:
        return dense_state(w) if isinstance(ctx.chosen_form(), Dense) else compress(self, w, ctx)

    wrapper.__lcpress_dense_aware__ = True  # type: ignore[attr-defined]
    return wrapper
