"""The conformance checks of a compression scheme.

Each check takes a :class:`SchemeSubject` and either passes (returns None),
is not applicable (returns the reason), or fails with an
:class:`AssertionError` that names the scheme, the layer and what to fix.
They state the contract of :class:`lcpress.Scheme`:

* ``decompress(compress(w))`` has w's shape and dtype, also after a warm start;
* a selecting scheme's candidates are well formed, include the dense layer,
  and their errors are exact (the core's selection trusts them);
* the error does not rise as the budget grows (the core's budget and α paths);
* the C step is deterministic under a seed, whatever the global RNG holds;
* ``form(state)`` describes the layer it replaces, so cost models price it;
* ``realize(state, module)`` computes what the layer computes with weight Δ(θ);
* θ survives the checkpoint format (safetensors + JSON, no pickle).
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from lcpress.core.forms import Dense, Form, LayerSpec
from lcpress.core.realize import overrides_realize, unsaveable
from lcpress.errors import CStepError
from lcpress.options import Options
from lcpress.core.scheme import LAYER_KINDS, Scheme, State
from lcpress.core.tree import join_tensors, split_tensors
from lcpress.io.files import read_file, write_file
from lcpress.linalg.finite import all_finite
from .harness import CStepRun, ParamCount, run_c_step
from .layers import LayerCase
from .report import require

#: Budgets as fractions of the dense parameter count, smallest first.
BUDGET_RATIOS = (0.15, 0.3, 0.5, 0.75, 1.0)
#: α relative to ‖w‖²/dense cost (so the trade-off t = 2α/μ spans the useful range), largest first.
ALPHA_SCALES = (100.0, 10.0, 1.0, 0.1, 0.01, 0.0)
#: Budgets at which states are realized and stored (two compressed forms per layer).
SAMPLE_RATIOS = (0.3, 0.6)
MU = 1e-3


@dataclass
class SchemeSubject:
    """A scheme class with its options, and the layers it is checked on."""

    cls: type[Scheme]
    options: Options
    cases: list[LayerCase]
    refused: dict[str, str]
    seed: int = 0
    budgets: list[Options] | None = None
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    _cache: dict[Any, Any] = field(default_factory=dict)
    #: the layer being checked, in words: what a failure the plugin raises is reported on
    at: str | None = None

    @property
    def name(self) -> str:
        return self.cls.name

    def scheme(self, options: Options | None = None) -> Scheme:
        """A fresh instance, as the planner makes one per task."""
        return self.cls(options if options is not None else self.options)

    def weight(self, case: LayerCase, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return case.module(self.seed, dtype).weight.detach()

    def selecting(self, case: LayerCase) -> bool:
        """Whether the scheme offers the core candidates for this layer (with these options)."""
        key = ("selecting", case.name)
        if key not in self._cache:
            self._cache[key] = self.run(case).candidates is not None
        return self._cache[key]

    def run(self, case: LayerCase, dtype: torch.dtype = torch.float32, ratio: float | None = None,
            alpha: float = 0.0, options: Options | None = None, cached: bool = True) -> CStepRun:
        """The direct-compression C step on ``case`` (memoized unless ``cached`` is False)."""
        key = (case.name, dtype, ratio, alpha, repr(options))
        if cached and key in self._cache:
            return self._cache[key]
        with refused_as_failure(self.where(case, f"{dtype}, first C step")):
            result = run_c_step(self.scheme(options), self.weight(case, dtype), case.spec(), layer=case.name,
                                cost_model=ParamCount(), ratio=ratio, alpha=alpha, mu=MU, seed=self.seed)
        if cached:
            self._cache[key] = result
        return result

    def samples(self, case: LayerCase) -> list[State]:
        """States to realize and store: two budgets for a selecting scheme, the options' own otherwise."""
        if not self.selecting(case):
            return [self.run(case).state]
        return [self.run(case, ratio=r).state for r in SAMPLE_RATIOS]

    def where(self, case: LayerCase, extra: str = "") -> str:
        return f"scheme {self.name!r} on layer {case.name!r}{' (' + extra + ')' if extra else ''}"

    def each(self, cases: Iterable[LayerCase] | None = None) -> Iterator[LayerCase]:
        """The layers to check (default: all), each named in :attr:`at` while it is checked."""
        for case in self.cases if cases is None else cases:
            self.at = self.where(case)
            yield case


Check = Callable[[SchemeSubject], "str | None"]


@contextlib.contextmanager
def refused_as_failure(where: str) -> Iterator[None]:
    """The engine's own refusal of a C step (a CStepError: Δ(θ) of the wrong shape, dtype, NaN …) fails the check."""
    try:
        yield
    except CStepError as exc:
        raise AssertionError(f"{where}: {exc}") from exc


def error(w: torch.Tensor, delta: torch.Tensor) -> float:
    return float(torch.sum((w.double() - delta.double()) ** 2))


def energy(w: torch.Tensor) -> float:
    return float(torch.sum(w.double() ** 2))


def check_declaration(s: SchemeSubject) -> str | None:
    """Class attributes the registry and config rely on; check_layer answers None or a reason."""
    require(isinstance(getattr(s.cls, "name", None), str) and s.cls.name,
            f"{s.cls.__name__} needs a class attribute 'name' (the string configs use)")
    require(isinstance(s.cls.Options, type) and issubclass(s.cls.Options, Options),
            f"scheme {s.name!r}: Options must subclass lcpress.Options")
    require(isinstance(s.options, s.cls.Options),
            f"scheme {s.name!r}: the options given are a {type(s.options).__name__}, not its {s.cls.Options.__name__}")
    require(s.cls.allocation in ("sum", "minmax"), f"scheme {s.name!r}: allocation must be 'sum' or 'minmax'")
    require(s.cls.sensitivity in ("error", "measured"), f"scheme {s.name!r}: sensitivity must be 'error' or 'measured'")
    kinds = getattr(s.cls, "kinds", None)
    require(isinstance(kinds, (set, frozenset)) and bool(kinds) and kinds <= set(LAYER_KINDS),
            f"scheme {s.name!r}: kinds must be a non-empty set of 'linear', 'conv2d' and 'embedding', not {kinds!r}")
    require(bool(s.cases), f"scheme {s.name!r} refuses every layer of the kit ({s.refused}); pass layers=[...] "
                           f"with layers it compresses")
    return None


def check_shape_dtype(s: SchemeSubject) -> str | None:
    """Δ(θ) has w's shape, dtype and finite values, at the first C step and after a warm start."""
    for case in s.each():
        for dtype in s.dtypes:
            w = s.weight(case, dtype)
            ratio = SAMPLE_RATIOS[0] if s.selecting(case) else None
            first = s.run(case, dtype, ratio=ratio)
            with refused_as_failure(s.where(case, f"{dtype}, warm-started C step")):
                warm = run_c_step(s.scheme(), w, case.spec(), layer=case.name, cost_model=ParamCount(), ratio=ratio,
                                  mu=MU * 2, seed=s.seed, step=1, previous=first.state)
            for label, run in (("first C step", first), ("warm-started C step", warm)):
                require(isinstance(run.state, State),
                        f"{s.where(case)}: compress() returned a {type(run.state).__name__}, not an lcpress.State")
                require(all(isinstance(t, torch.Tensor) for t in run.state.tensors.values()),
                        f"{s.where(case)}: State.tensors must map names to tensors")
                delta = s.scheme().decompress(run.state)
                where = s.where(case, f"{dtype}, {label}")
                require(isinstance(delta, torch.Tensor), f"{where}: decompress() must return a tensor")
                require(tuple(delta.shape) == tuple(w.shape),
                        f"{where}: decompress(compress(w)) has shape {tuple(delta.shape)}, w has {tuple(w.shape)}")
                require(delta.dtype == w.dtype, f"{where}: decompress(compress(w)) is {delta.dtype}, w is {w.dtype}")
                require(all_finite(delta), f"{where}: Δ(θ) holds NaN or infinite values")
    return None


def check_candidates(s: SchemeSubject) -> str | None:
    """Candidates are forms with one finite, non-negative error each."""
    selecting = [c for c in s.cases if s.selecting(c)]
    if not selecting:
        return "the scheme offers no candidates with these options (it does not select)"
    for case in s.each(selecting):
        cands = s.run(case).candidates
        where = s.where(case)
        require(len(cands.forms) == len(cands.errors), f"{where}: {len(cands.forms)} forms but {len(cands.errors)} errors")
        require(all(isinstance(f, Form) for f in cands.forms), f"{where}: every candidate must be an lcpress.Form")
        for form in cands.forms:
            try:
                hash(form)
            except TypeError:
                raise AssertionError(f"{where}: form {form!r} is not hashable; make it a frozen dataclass") from None
        errors = cands.errors.double()
        require(bool(torch.isfinite(errors).all()), f"{where}: candidate errors hold NaN or infinite values")
        tol = 1e-9 * energy(s.weight(case))
        require(bool((errors >= -tol).all()), f"{where}: candidate errors must be non-negative, got {errors.min():.3g}")
    return None


def check_dense_candidate(s: SchemeSubject) -> str | None:
    """The dense layer is a candidate with error 0, so compression never costs more than dense."""
    selecting = [c for c in s.cases if s.selecting(c)]
    if not selecting:
        return "the scheme offers no candidates with these options (it does not select)"
    for case in s.each(selecting):
        cands = s.run(case).candidates
        dense = [i for i, f in enumerate(cands.forms) if isinstance(f, Dense)]
        require(bool(dense), f"{s.where(case)}: add lcpress.Dense() to the candidates (with error 0), so the core "
                             f"can always leave a layer as it is")
        require(float(cands.errors[dense[0]]) <= 1e-9 * energy(s.weight(case)),
                f"{s.where(case)}: the dense candidate's error must be 0, got {float(cands.errors[dense[0]]):.3g}")
    return None


def check_exact_errors(s: SchemeSubject) -> str | None:
    """The error a candidate promises is the error compress() delivers for it (the core trusts it)."""
    selecting = [c for c in s.cases if s.selecting(c)]
    if not selecting:
        return "the scheme offers no candidates with these options (it does not select)"
    for case in s.each(selecting):
        w = s.weight(case)
        tol = 1e-5 * energy(w) + 1e-12
        for ratio in BUDGET_RATIOS:
            run = s.run(case, ratio=ratio)
            actual = error(w, s.scheme().decompress(run.state))
            form = run.candidates.forms[run.choice]
            require(abs(actual - run.claimed_error) <= tol,
                    f"{s.where(case, f'budget {ratio:.0%} of dense params')}: candidate {form!r} claims error "
                    f"{run.claimed_error:.6g} but ‖w − decompress(compress(w))‖² = {actual:.6g}; Candidates.errors "
                    f"must be exact")
    return None


def check_budget_monotone(s: SchemeSubject) -> str | None:
    """The error never rises when the budget grows (target ratios up, or α down)."""
    checked = False
    for case in s.each():
        w = s.weight(case)
        tol = 1e-6 * energy(w) + 1e-12
        if s.selecting(case):
            paths = [(f"budget {r:.0%} of dense params", s.run(case, ratio=r)) for r in BUDGET_RATIOS]
            dense_cost = ParamCount().dense_cost(case.spec())
            scale = energy(w) / dense_cost
            paths_alpha = [(f"α = {a * scale * MU / 2:.3g}", s.run(case, alpha=a * scale * MU / 2)) for a in ALPHA_SCALES]
            series = [paths, paths_alpha]
        elif s.budgets:
            series = [[(f"options {o.to_dict()}", s.run(case, options=o)) for o in s.budgets]]
        else:
            continue
        checked = True
        for path in series:
            errors = [(label, error(w, s.scheme().decompress(run.state))) for label, run in path]
            for (label_a, a), (label_b, b) in zip(errors, errors[1:]):
                require(b <= a + tol, f"{s.where(case)}: the error rose from {a:.6g} at {label_a} to {b:.6g} at "
                                      f"{label_b}; a larger budget must never give a worse approximation")
    if not checked:
        return ("the scheme does not select with these options: pass budgets=[options, …] ordered from the "
                "smallest budget to the largest to check it")
    return None


def check_deterministic(s: SchemeSubject) -> str | None:
    """Same seed, same θ — bit for bit, whatever the global RNG state (use ctx.generator)."""
    for case in s.each():
        ratio = SAMPLE_RATIOS[0] if s.selecting(case) else None
        states = []
        for global_seed in (1234, 4321):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(global_seed)
                states.append(s.run(case, ratio=ratio, cached=False).state)
        a, b = states
        where = s.where(case)
        require(a.tensors.keys() == b.tensors.keys(), f"{where}: two C steps with one seed stored different tensors")
        for key in a.tensors:
            require(a.tensors[key].shape == b.tensors[key].shape and bool(torch.equal(a.tensors[key], b.tensors[key])),
                    f"{where}: tensor {key!r} differs between two C steps with the same seed; draw random numbers "
                    f"from ctx.generator, not the global RNG")
        require(a.meta == b.meta, f"{where}: meta differs between two C steps with the same seed: {a.meta} vs {b.meta}")
    return None


def check_form(s: SchemeSubject) -> str | None:
    """``form(state)`` is a hashable Form whose primitives chain from the layer's input to its output."""
    for case in s.each():
        spec = case.spec()
        for state in s.samples(case):
            form = s.scheme().form(state)
            where = s.where(case, f"form {form!r}")
            require(isinstance(form, Form), f"{where}: form() must return an lcpress.Form")
            try:
                hash(form)
            except TypeError:
                raise AssertionError(f"{where}: forms must be hashable (frozen dataclasses)") from None
            prims = form.primitives(spec)
            require(len(prims) >= 1 and all(isinstance(p, LayerSpec) for p in prims),
                    f"{where}: primitives() must list at least one LayerSpec")
            branches = form.branches(spec)
            require(tuple(p for b in branches for p in b) == tuple(prims),
                    f"{where}: primitives() must be the concatenation of branches()")
            for chain in branches:
                _check_chain(spec, chain, where, form.fills_outputs)
            for value, what in ((form.param_count(spec), "param_count"), (form.storage_bits(spec), "storage_bits"),
                                (sum(p.flops for p in prims), "FLOPs")):
                require(math.isfinite(value) and value >= 0, f"{where}: {what} must be finite and non-negative, got {value}")
    return None


def _check_chain(spec: LayerSpec, chain: tuple[LayerSpec, ...], where: str, fills_outputs: bool = False) -> None:
    """A chain reads the layer's input, passes activations on (reshapes are free), and outputs the layer's output.

    A form that ``fills_outputs`` may compute fewer output channels (the others are put back as constants).
    """
    numel = math.prod
    require(len(chain) >= 1, f"{where}: every branch needs at least one primitive")
    require(numel(chain[0].input_shape) == numel(spec.input_shape),
            f"{where}: the first primitive must read the layer's input {spec.input_shape}, got {chain[0].input_shape}")
    for p, q in zip(chain, chain[1:]):
        require(numel(q.input_shape) == numel(p.output_shape),
                f"{where}: a primitive reads shape {q.input_shape} but the one before it outputs {p.output_shape}")
    produced = chain[-1].output_shape
    if fills_outputs and chain[-1].out_channels <= spec.out_channels:
        produced = chain[-1].with_(out_channels=spec.out_channels).output_shape
    require(tuple(produced) == tuple(spec.output_shape),
            f"{where}: the last primitive outputs {chain[-1].output_shape}, the layer {spec.output_shape}")


def check_realize(s: SchemeSubject) -> str | None:
    """The realized module computes the layer with weight Δ(θ), on the layer's real input."""
    for case in s.each():
        module = case.module(s.seed)
        x = case.input(s.seed)
        for state in s.samples(case):
            scheme = s.scheme()
            reference = copy.deepcopy(module)
            with torch.no_grad():
                reference.weight.copy_(scheme.decompress(state).reshape(reference.weight.shape))
            original = copy.deepcopy(module)
            realized = scheme.realize(state, original)
            form = scheme.form(state)
            where = s.where(case, f"form {form!r}")
            require(isinstance(realized, nn.Module), f"{where}: realize() must return an nn.Module")
            require(realized is not original, f"{where}: realize() must return a new module, not the one it was given")
            require(overrides_realize(scheme) or isinstance(form, Dense),
                    f"{where}: form() says {form.describe()}, but realize() is the base class's dense copy, so the "
                    f"saved model would not have the form the C step priced; override realize()")
            problem = unsaveable(realized)
            require(problem is None, f"{where}: {problem}")
            with torch.no_grad():
                want, got = reference.eval()(x), realized.eval()(x)
            require(tuple(got.shape) == tuple(want.shape),
                    f"{where}: the realized module outputs shape {tuple(got.shape)}, the layer {tuple(want.shape)}")
            gap = float((got - want).abs().max())
            scale = float(want.abs().max()) + 1.0
            require(gap <= 1e-4 * scale, f"{where}: the realized module differs from the layer holding Δ(θ) by "
                                         f"{gap:.3g} (max |difference|); realize() must compute the same function")
    return None


def check_state_roundtrip(s: SchemeSubject) -> str | None:
    """θ survives a checkpoint: plain-JSON meta, tensors through safetensors, the same Δ(θ) and form after."""
    with tempfile.TemporaryDirectory(prefix="lcpress-conformance-") as tmp:
        for case in s.each():
            for i, state in enumerate(s.samples(case)):
                scheme = s.scheme()
                where = s.where(case)
                tensors: dict[str, torch.Tensor] = {}
                try:
                    doc = split_tensors({"tensors": state.tensors, "meta": state.meta}, tensors, "theta")
                except TypeError as exc:
                    raise AssertionError(f"{where}: State.meta must hold plain JSON values ({exc})") from None
                path = Path(tmp) / f"{case.name}-{i}.safetensors"
                write_file(path, tensors, {"state": doc})
                loaded_tensors, meta = read_file(path)
                restored = join_tensors(meta["state"], loaded_tensors)
                again = State(restored["tensors"], restored["meta"])
                before, after = scheme.decompress(state), s.scheme().decompress(again)
                require(after.dtype == before.dtype and bool(torch.equal(before, after)),
                        f"{where}: Δ(θ) changed after θ was saved and loaded")
                require(s.scheme().form(again) == scheme.form(state),
                        f"{where}: form() changed after θ was saved and loaded: {scheme.form(state)!r} → "
                        f"{s.scheme().form(again)!r}")
    return None


def check_shared(s: SchemeSubject) -> str | None:
    """``check_shared()`` answers None or a reason; a scheme that takes a joined vector (None) compresses one.

    ``shared: true`` hands a fixed-form scheme its task group's weights as one flat vector. A scheme that needs
    one layer's matrix must say so in ``check_shared()``, or the run fails at its first C step as a plugin bug.
    """
    answer = s.scheme().check_shared()
    require(answer is None or (isinstance(answer, str) and answer),
            f"scheme {s.name!r}: check_shared() must return None or a reason (a non-empty string), not {answer!r}")
    cases = [c for c in s.cases if not s.selecting(c)][:2]
    if answer is not None or len(cases) < 1:
        return None  # it refuses joined vectors (said), or it selects forms, which a joined vector cannot price
    joined = torch.cat([s.weight(c).reshape(-1) for c in cases])
    where = f"scheme {s.name!r} on {len(cases)} layers joined (shared: true)"
    try:
        run = run_c_step(s.scheme(), joined, None, layer="group0", cost_model=ParamCount(), mu=MU, seed=s.seed)
        delta = s.scheme().decompress(run.state)
    except Exception as exc:  # the engine's CStepError (naming the plugin) or the plugin's own
        raise AssertionError(f"{where}: {type(exc).__name__}: {exc} — check_shared() returned None, which says it "
                             f"takes a joined vector: return the reason it cannot from check_shared()") from None
    require(tuple(delta.shape) == tuple(joined.shape),
            f"{where}: Δ(θ) has shape {tuple(delta.shape)}, the joined vector {tuple(joined.shape)}")
    return None


#: Every scheme check, by name (pass names to ``skip=`` to leave some out).
SCHEME_CHECKS: dict[str, Check] = {
    "declaration": check_declaration,
    "shape_dtype": check_shape_dtype,
    "candidates": check_candidates,
    "dense_candidate": check_dense_candidate,
    "exact_errors": check_exact_errors,
    "budget_monotone": check_budget_monotone,
    "deterministic": check_deterministic,
    "form": check_form,
    "realize": check_realize,
    "state_roundtrip": check_state_roundtrip,
    "shared": check_shared,
}


def options_of(cls: type, options: Options | dict[str, Any] | None, where: str) -> Options:
    """The options object for ``cls`` from an instance, a YAML-style dict, or None (defaults)."""
    if options is None:
        return cls.Options()
    if isinstance(options, dict):
        return cls.Options.from_dict(options, where)
    return options


def budgets_of(cls: type, budgets: list[Options | dict[str, Any]] | None) -> list[Options] | None:
    if budgets is None:
        return None
    return [options_of(cls, b, f"{cls.name}.budgets[{i}]") for i, b in enumerate(budgets)]
