"""The conformance kit: checks every scheme and cost model must pass.

Plugin authors run it from their own test suite::

    from lcpress.testing import check_scheme, check_cost_model

    def test_my_scheme_conforms():
        check_scheme(MyScheme, options={"rank_multiple": 4})

    def test_my_cost_model_conforms():
        check_cost_model(MyCost)

Each function runs a battery of checks (``SCHEME_CHECKS``,
``COST_MODEL_CHECKS``), raises :class:`AssertionError` with a message naming
the plugin, the layer and what to fix at the first violation — an exception
the plugin raises during a check becomes one too, naming the check and the
layer — and otherwise returns a :class:`Report` of what passed and what did
not apply. The C steps
run through the real engine (:mod:`lcpress.testing.harness`), so a scheme that
passes behaves the same inside ``lcpress compress``.

With pytest, the ``lcpress_conformance`` and ``lcpress_plugins`` fixtures
(:mod:`lcpress.testing.pytest_plugin`, registered through the ``pytest11``
entry point) wrap the same functions: an unavailable cost model skips, and
measured cost models write their tables to a temporary directory.
lcpress runs this kit on every built-in scheme and cost model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from lcpress.core.costmodel import CostModel
from lcpress.core.forms import Form, LayerSpec
from lcpress.options import Options
from lcpress.core.scheme import Scheme
from .cost_checks import COST_MODEL_CHECKS, CostModelSubject, default_cases, default_forms
from .harness import CStepRun, run_c_step
from .layers import LayerCase, default_layers
from .report import Report, require
from .scheme_checks import SCHEME_CHECKS, SchemeSubject, budgets_of, options_of

__all__ = [
    "check_scheme", "check_cost_model", "Report", "LayerCase", "default_layers", "default_forms",
    "SCHEME_CHECKS", "COST_MODEL_CHECKS", "run_c_step", "CStepRun",
]


def check_scheme(
    scheme: type[Scheme],
    options: Options | dict[str, Any] | None = None,
    *,
    layers: Sequence[LayerCase] | None = None,
    budgets: Sequence[Options | dict[str, Any]] | None = None,
    seed: int = 0,
    skip: Iterable[str] = (),
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
) -> Report:
    """Run every scheme check on ``scheme`` with ``options``.

    :param scheme: the Scheme subclass (registered or not).
    :param options: its options: an Options instance, a dict as in a YAML config, or None for defaults.
    :param layers: layers to compress (default: :func:`default_layers`); those the
        scheme refuses (its ``kinds``, then its ``check_layer``) are skipped and listed in the report.
    :param budgets: for a scheme that does not select, options ordered from the
        smallest budget to the largest (e.g. ``[{"rank": 2}, {"rank": 4}]``), so
        the kit can check that the error does not rise with the budget.
    :param skip: names of checks to leave out (see ``SCHEME_CHECKS``).
    :param dtypes: weight dtypes the shape/dtype check compresses.
    """
    label = f"scheme {getattr(scheme, 'name', scheme.__name__)!r}"
    _declared(label, scheme)
    opts = options_of(scheme, options, f"{getattr(scheme, 'name', scheme.__name__)}.options")
    cases, refused = [], {}
    with _failing(f"{label}, check 'declaration' (creating it with these options)"):
        probe = scheme(opts)
    for case in layers if layers is not None else default_layers():
        with _failing(f"{label} on layer {case.name!r}, check 'declaration' (refuses(), check_layer())"):
            reason = probe.refuses(case.spec(), case.module())
        if reason is None:
            cases.append(case)
        else:
            refused[case.name] = reason
    subject = SchemeSubject(scheme, opts, cases, refused, seed, budgets_of(scheme, budgets), tuple(dtypes))
    report = Report(label)
    report.skipped.update({f"layer {name}": f"refused: {why}" for name, why in refused.items()})
    with _one_thread():
        _run(SCHEME_CHECKS, subject, skip, report)
    return report


def check_cost_model(
    cost_model: type[CostModel],
    options: Options | dict[str, Any] | None = None,
    *,
    specs: Sequence[LayerSpec] | None = None,
    forms: Sequence[Form] | None = None,
    skip: Iterable[str] = (),
) -> Report:
    """Run every cost-model check on ``cost_model`` with ``options``.

    :param specs: layers to price (default: the kit's layers). A model that
        prices only what its table holds passes the layers it covers.
    :param forms: forms to price on every layer (default: dense and a few low-rank forms).
    :param skip: names of checks to leave out (see ``COST_MODEL_CHECKS``).

    A cost model whose ``unavailable_reason()`` is not None here (no GPU …) is
    not checked; the report's ``unavailable`` says why.
    """
    label = f"cost model {getattr(cost_model, 'name', cost_model.__name__)!r}"
    _declared(label, cost_model)
    opts = options_of(cost_model, options, f"cost_models.{getattr(cost_model, 'name', cost_model.__name__)}")
    report = Report(label)
    with _failing(f"{label}, check 'declaration' (creating it, unavailable_reason())"):
        reason = cost_model(opts).unavailable_reason()
    if reason:
        report.unavailable = reason
        return report
    if specs is None:
        cases = default_cases() if forms is None else [(s, list(forms)) for s, _ in default_cases()]
    else:
        cases = [(s, list(forms) if forms is not None else default_forms(s)) for s in specs]
    _run(COST_MODEL_CHECKS, CostModelSubject(cost_model, opts, cases), skip, report)
    return report


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The kit's layers are tiny: one thread is many times faster than several on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _declared(label: str, cls: type) -> None:
    """The ``declaration`` check's part that must come first: an option default that breaks its own declaration
    (its type, its range) fails before the options are built, which would raise."""
    declared = getattr(cls, "Options", None)
    problem = declared.default_problem() if isinstance(declared, type) and issubclass(declared, Options) else None
    require(problem is None, f"{label}, check 'declaration': {problem}; fix the default where the option is declared")


@contextlib.contextmanager
def _failing(where: str | Callable[[], str]) -> Iterator[None]:
    """An exception the plugin raises in the block fails the check: an AssertionError saying where, as every check's.

    ``where`` may be a function, read only on failure (a check learns which layer it is on as it goes).
    """
    try:
        yield
    except AssertionError:
        raise
    except Exception as exc:
        said = where() if callable(where) else where
        raise AssertionError(f"{said}: raised {type(exc).__name__}: {exc}") from exc


def _run(checks: dict[str, Any], subject: Any, skip: Iterable[str], report: Report) -> None:
    skip = set(skip)
    unknown = skip - set(checks)
    if unknown:
        raise ValueError(f"skip={sorted(unknown)}: no such check; checks are {', '.join(checks)}")
    for name, check in checks.items():
        if name in skip:
            report.skipped[name] = "skipped by the caller"
            continue
        subject.at = None
        with _failing(lambda: f"{subject.at or report.subject}, check {name!r}"):  # named with the layer it was on
            why = check(subject)
        if why is None:
            report.passed.append(name)
        else:
            report.skipped[name] = why
