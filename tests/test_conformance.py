"""The conformance kit: every registered plugin passes it, and it catches broken plugins."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import lcpress
from lcpress.core.forms import Dense, Form, LayerSpec, LowRank
from lcpress.core.registry import get_registry
from lcpress.testing import COST_MODEL_CHECKS, SCHEME_CHECKS, check_cost_model, check_scheme, default_layers
from lcpress.testing.pytest_plugin import Conformance

REGISTRY = get_registry()
LowRankScheme = REGISTRY.scheme("low_rank")
TINY_CONV = LayerSpec("conv2d", 4, 8, (1, 4, 6, 6), kernel_size=(3, 3), padding=(1, 1))

#: Per-plugin arguments of the kit; plugins not listed run with their defaults.
SCHEME_KIT: dict[str, dict] = {
    # composite schemes have no default parts: give them a low-rank + sparse and a prune → quantize chain
    "additive": {"options": {"parts": [{"scheme": "low_rank", "options": {"rank": 2}},
                                       {"scheme": "prune", "options": {"keep_fraction": 0.1}}]}},
    "sequential": {"options": {"parts": [{"scheme": "prune", "options": {"keep_fraction": 0.3}},
                                         {"scheme": "quantize", "options": {"k": 2, "zeros": "keep"}}]}},
}
COST_KIT: dict[str, dict] = {
    # a measured model times every form: keep it to one small layer and short timings
    "cpu_latency": {"options": {"min_run_time": 0.01, "threads": 1}, "specs": [TINY_CONV], "forms": [Dense(), LowRank(2)]},
}


@pytest.mark.parametrize("name", sorted(REGISTRY.schemes.classes))
def test_every_registered_scheme_passes_the_kit(name, lcpress_conformance):
    if REGISTRY.scheme(name).scope == "model":
        pytest.skip("a model-scope scheme binds a whole model; the kit checks per-layer schemes "
                    "(tests/test_channels.py covers 'channels')")
    report = lcpress_conformance.scheme(REGISTRY.scheme(name), **SCHEME_KIT.get(name, {}))
    assert {"shape_dtype", "deterministic", "form", "realize", "state_roundtrip"} <= set(report.passed), str(report)


#: Option variants whose forms and realizations differ from the defaults'.
VARIANTS = [
    ("prune", {"structured": True}), ("prune", {"structured": True, "keep": 3}),
    ("prune", {"mode": "l1_penalty", "alpha": 1e-3}), ("quantize", {"k": None}), ("quantize", {"codebook": "ternary"}),
    ("additive", {"parts": [{"scheme": "quantize", "options": {"k": 2}}, {"scheme": "low_rank", "options": {"rank": 2}},
                            {"scheme": "low_rank", "options": {"rank": 1}, "reshape": 2}]}),
]


@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_option_variants_pass_the_kit(name, options, lcpress_conformance):
    report = lcpress_conformance.scheme(REGISTRY.scheme(name), options)
    assert {"shape_dtype", "deterministic", "form", "realize", "state_roundtrip"} <= set(report.passed), str(report)


@pytest.mark.parametrize("name", sorted(REGISTRY.cost_models.classes))
def test_every_registered_cost_model_passes_the_kit(name, lcpress_conformance):
    report = lcpress_conformance.cost_model(REGISTRY.cost_model(name), **COST_KIT.get(name, {}))
    assert set(report.passed) == set(COST_MODEL_CHECKS), str(report)


def test_selecting_scheme_runs_every_check():
    report = check_scheme(LowRankScheme, {"rank_multiple": 4})
    assert report.passed == list(SCHEME_CHECKS)
    assert report.skipped == {"layer conv_grouped": "refused: low_rank factorizes convolutions with groups=1 only"}


def test_fixed_rank_scheme_is_checked_along_the_budgets_given():
    report = check_scheme(LowRankScheme, {"rank": 4}, budgets=[{"rank": 1}, {"rank": 2}, {"rank": 8}], dtypes=[torch.float32])
    assert "budget_monotone" in report.passed
    assert "candidates" in report.skipped  # it has nothing to select
    without = check_scheme(LowRankScheme, {"rank": 4}, dtypes=[torch.float32], skip=["realize", "state_roundtrip"])
    assert "budgets=[options" in without.skipped["budget_monotone"]
    assert without.skipped["realize"] == "skipped by the caller"


def test_unknown_check_name_is_refused():
    with pytest.raises(ValueError, match="no such check.*declaration"):
        check_scheme(LowRankScheme, skip=["realise"])


# ----------------------------------------------------------- broken schemes
class WrongShape(LowRankScheme):
    name = "wrong_shape"

    def decompress(self, state):
        return super().decompress(state).flatten()


class AlwaysFloat32(LowRankScheme):
    name = "always_float32"

    def decompress(self, state):
        return super().decompress(state).float()


class GlobalRandom(LowRankScheme):
    name = "global_random"

    def compress(self, w, ctx):
        state = super().compress(w, ctx)
        state.tensors["noise"] = torch.randn(3)  # not ctx.generator
        return state


class Overpromise(LowRankScheme):
    name = "overpromise"

    def candidates_many(self, items):
        found = super().candidates_many(items)
        for c in found:
            c.errors = c.errors * 0.5
        return found


class NoDense(LowRankScheme):
    name = "no_dense"

    def candidates_many(self, items):
        found = super().candidates_many(items)
        for c in found:
            c.forms, c.errors = c.forms[1:], c.errors[1:]
        return found


class InvertedRank(LowRankScheme):
    """Its 'rank' option means the opposite: a larger budget gives a worse approximation."""

    name = "inverted_rank"

    def compress(self, w, ctx):
        self.options = dataclasses.replace(self.options, rank=max(1, 12 - self.options.rank))
        return super().compress(w, ctx)


class StaleRealize(LowRankScheme):
    name = "stale_realize"

    def realize(self, state, module):
        return copy.deepcopy(module)  # still the original weight, not Δ(θ)


class SameModule(LowRankScheme):
    name = "same_module"

    def realize(self, state, module):
        return module


class PickledMeta(LowRankScheme):
    name = "pickled_meta"

    def compress(self, w, ctx):
        state = super().compress(w, ctx)
        state.meta["ranks"] = {1, 2}  # a set is not JSON
        return state


class UnknownKind(LowRankScheme):
    name = "unknown_kind"
    kinds = frozenset({"linear", "lstm"})


@dataclass(frozen=True)
class Truncated(Form):
    """Claims to replace the layer with one primitive that outputs too few channels."""

    kind: ClassVar[str] = "truncated"

    def primitives(self, spec):
        return (spec.with_(out_channels=1),)


class WrongForm(LowRankScheme):
    name = "wrong_form"

    def form(self, state):
        return Truncated()


@pytest.mark.parametrize("scheme,kwargs,message", [
    (WrongShape, {}, r"scheme 'wrong_shape' on layer 'linear' \(torch.float32, first C step\): .*Δ\(θ\) has shape "
                     r"\(1536,\) but the weight it stands for has \(32, 48\)"),
    (AlwaysFloat32, {}, r"torch.float64, first C step\): .*Δ\(θ\) is torch.float32 but the weight is torch.float64"),
    (GlobalRandom, {}, r"tensor 'noise' differs between two C steps with the same seed; draw random numbers from ctx.generator"),
    (Overpromise, {}, r"claims error .* but ‖w − decompress\(compress\(w\)\)‖² = .*Candidates.errors must be exact"),
    (NoDense, {}, r"add lcpress.Dense\(\) to the candidates"),
    (InvertedRank, {"options": {"rank": 4}, "budgets": [{"rank": 2}, {"rank": 8}]},
     r"the error rose from .* at options \{.*'rank': 2.*\} to .* at options \{.*'rank': 8.*\}"),
    (StaleRealize, {}, r"the realized module differs from the layer holding Δ\(θ\)"),
    (SameModule, {}, r"realize\(\) must return a new module"),
    (PickledMeta, {}, r"State.meta must hold plain JSON values"),
    (WrongForm, {}, r"the last primitive outputs \(4, 1\), the layer \(4, 32\)"),
    (UnknownKind, {}, r"kinds must be a non-empty set of 'linear', 'conv2d' and 'embedding', not frozenset"),
])
def test_kit_catches_a_broken_scheme(scheme, kwargs, message):
    with pytest.raises(AssertionError, match=message):
        check_scheme(scheme, **kwargs)


def test_scheme_refusing_every_layer_is_told_to_pass_its_layers():
    class ConvOnly(LowRankScheme):
        name = "conv_only"

        def check_layer(self, spec, module):
            return "only 5×5 kernels"

    with pytest.raises(AssertionError, match=r"refuses every layer of the kit.*pass layers=\[\.\.\.\]"):
        check_scheme(ConvOnly)
    one = [c for c in default_layers() if c.name == "conv3x3"]

    class Conv3x3(LowRankScheme):
        name = "conv3x3_only"

        def check_layer(self, spec, module):
            return None if spec.kernel_size == (3, 3) else "3×3 only"

    assert "realize" in check_scheme(Conv3x3, layers=one).passed


# ------------------------------------------------------- broken cost models
class Negative(lcpress.CostModel):
    name = "negative"

    def cost(self, spec, form):
        return -1.0


class Drifting(lcpress.CostModel):
    name = "drifting"

    def cost(self, spec, form):
        return float(form.param_count(spec))

    def costs(self, spec, forms):
        return super().costs(spec, forms) + 1.0


class Float32Costs(lcpress.CostModel):
    name = "float32_costs"

    def cost(self, spec, form):
        return 1.0

    def costs(self, spec, forms):
        return torch.ones(len(forms))


class Unpriced(lcpress.CostModel):
    name = "unpriced"

    def cost(self, spec, form):
        return float("nan") if isinstance(form, Dense) else 1.0


@pytest.mark.parametrize("model,message", [
    (Negative, r"cost model 'negative' on linear 48→32 at input \(4, 48\), form Dense\(\): cost must be finite and non-negative, got -1.0"),
    (Unpriced, r"form Dense\(\): cost must be finite"),
    (Drifting, r"costs\(\) gives .* but cost\(\) gives"),
    (Float32Costs, r"costs\(\) must return a float64 tensor of shape"),
])
def test_kit_catches_a_broken_cost_model(model, message):
    with pytest.raises(AssertionError, match=message):
        check_cost_model(model)


def test_unavailable_cost_model_is_reported_and_skipped_by_the_fixture():
    class NeedsTpu(lcpress.CostModel):
        name = "needs_tpu"

        def unavailable_reason(self):
            return "no TPU here"

        def cost(self, spec, form):
            raise AssertionError("must not be called")

    report = check_cost_model(NeedsTpu)
    assert report.unavailable == "no TPU here" and not report.passed
    with pytest.raises(pytest.skip.Exception, match="cost model 'needs_tpu' is unavailable here: no TPU here"):
        Conformance().cost_model(NeedsTpu)


def test_kit_runs_the_engine_c_step_and_leaves_the_global_rng_alone():
    from lcpress.testing import run_c_step

    layer = default_layers()[2]
    before = torch.get_rng_state()
    run = run_c_step(LowRankScheme(), layer.module().weight.detach(), layer.spec(), ratio=0.5)
    assert torch.equal(before, torch.get_rng_state())
    assert isinstance(run.candidates.forms[run.choice], LowRank)
    delta = LowRankScheme().decompress(run.state)
    w = layer.module().weight.detach()
    assert run.claimed_error == pytest.approx(float(((w - delta) ** 2).sum()), rel=1e-4)


def test_fixtures_register_plugins_for_one_test_only(lcpress_plugins, plugins):
    class Plugin:
        __name__ = "fixture_plugin"

        @lcpress.hookimpl
        def lcpress_register_schemes(self, register):
            register(WrongShape)

    registry = lcpress_plugins(Plugin())
    assert registry.scheme("wrong_shape") is WrongShape
    assert lcpress.get_registry().scheme("wrong_shape") is WrongShape


def test_fixture_registration_is_gone_after_the_test():
    assert "wrong_shape" not in lcpress.get_registry().schemes.classes


def test_conftest_fixture_registers_and_nests(plugins):
    class A:
        __name__ = "plugin_a"

        @lcpress.hookimpl
        def lcpress_register_cost_models(self, register):
            register(Negative)

    class B:
        __name__ = "plugin_b"

        @lcpress.hookimpl
        def lcpress_register_cost_models(self, register):
            register(Drifting)

    plugins(A())
    registry = plugins(B())
    assert {"negative", "drifting"} <= set(registry.cost_models.classes)


def test_pytest11_entry_point_provides_the_fixtures():
    import importlib.metadata

    points = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.value == "lcpress.testing.pytest_plugin" for ep in points), \
        "reinstall lcpress (pip install -e .) so its pytest11 entry point is registered"


# ------------------------------------------- what the plugin raises, and what it declares
class RaisingRealize(LowRankScheme):
    name = "raising_realize"

    def realize(self, state, module):
        raise NotImplementedError("no realization yet")


class RaisingCost(lcpress.CostModel):
    name = "raising_cost"

    def cost(self, spec, form):
        if not isinstance(form, Dense):
            raise ValueError(f"cannot price {form.describe()}")
        return 1.0


@dataclass
class OutOfRangeOptions(lcpress.Options):
    rank: int = lcpress.option(0, help="fixed rank", ge=1)


class OutOfRangeDefault(LowRankScheme):
    name = "out_of_range_default"
    Options = OutOfRangeOptions


def test_kit_names_the_check_and_layer_of_an_exception_the_plugin_raises():
    with pytest.raises(AssertionError, match=r"scheme 'raising_realize' on layer 'linear', check 'realize': raised "
                                             r"NotImplementedError: no realization yet"):
        check_scheme(RaisingRealize)
    with pytest.raises(AssertionError, match=r"cost model 'raising_cost' on linear 48→32 at input \(4, 48\), check "
                                             r"'finite': raised ValueError: cannot price rank 1"):
        check_cost_model(RaisingCost)


def test_kit_fails_a_default_that_breaks_its_own_declaration():
    with pytest.raises(AssertionError, match=r"scheme 'out_of_range_default', check 'declaration': the default of option "
                                             r"'rank' \(0\) of OutOfRangeOptions is outside its declared range \(at "
                                             r"least 1\)"):
        check_scheme(OutOfRangeDefault)


@pytest.mark.parametrize("price", [np.float32, np.int64, lambda x: torch.tensor(x)], ids=["float32", "int64", "tensor"])
def test_kit_accepts_the_prices_the_core_accepts(price):
    class Priced(lcpress.CostModel):
        name = "priced"

        def cost(self, spec, form):
            return price(float(form.param_count(spec)))

    assert set(check_cost_model(Priced).passed) == set(COST_MODEL_CHECKS)


class DenseCopyRealize(LowRankScheme):
    """Prices low-rank forms but realizes the base class's dense copy: the saved model would not be smaller."""

    name = "dense_copy_realize"
    realize = lcpress.Scheme.realize


class Opaque(nn.Module):
    """A realized module class no plugin allow-lists."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class UnlistedRealize(LowRankScheme):
    name = "unlisted_realize"

    def realize(self, state, module):
        return Opaque(super().realize(state, module))


@pytest.mark.parametrize("scheme, said", [
    (DenseCopyRealize, r"form\(\) says rank \d+, but realize\(\) is the base class's dense copy"),
    (UnlistedRealize, r"realize\(\) returned Opaque, which a model file cannot rebuild; allow-list the class with the "
                      r"lcpress_register_modules hook"),
])
def test_kit_fails_a_realization_the_saved_model_would_not_keep(scheme, said):
    with pytest.raises(AssertionError, match=said):
        check_scheme(scheme)
