"""pytest fixtures for plugin authors (registered through the ``pytest11`` entry point).

Installed with lcpress, so any test suite can use them without imports::

    def test_my_scheme(lcpress_conformance):
        lcpress_conformance.scheme(MyScheme, options={"rank": 4})

    def test_my_cost_model(lcpress_conformance):
        lcpress_conformance.cost_model(MyLatency)   # skips where it is unavailable

    def test_compress_with_my_plugin(lcpress_plugins):
        lcpress_plugins(my_plugin_module)          # registered for this test only
        lcpress.compress(model, {"tasks": [{"layers": ["*"], "scheme": "my_scheme"}]}, ...)

lcpress itself is imported only when a fixture is used, so this module costs
nothing in test runs that do not touch lcpress.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import pytest


class Conformance:
    """The conformance kit bound to one test: unavailable cost models skip, failures fail."""

    def scheme(self, scheme: type, options: Any = None, **kwargs: Any) -> Any:
        """:func:`lcpress.testing.check_scheme`; returns its report."""
        from lcpress.testing import check_scheme

        return check_scheme(scheme, options, **kwargs)

    def cost_model(self, cost_model: type, options: Any = None, **kwargs: Any) -> Any:
        """:func:`lcpress.testing.check_cost_model`; skips the test when the model cannot run here."""
        from lcpress.testing import check_cost_model

        report = check_cost_model(cost_model, options, **kwargs)
        if report.unavailable:
            pytest.skip(f"cost model {cost_model.name!r} is unavailable here: {report.unavailable}")
        return report


@pytest.fixture
def lcpress_conformance(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Conformance:
    """Run the lcpress conformance kit on a scheme or cost model (measured tables go to a temporary directory)."""
    monkeypatch.setenv("LCPRESS_CACHE_DIR", str(tmp_path_factory.mktemp("lcpress-cost-tables")))
    return Conformance()


@pytest.fixture
def lcpress_plugins() -> Iterator[Callable[..., Any]]:
    """Register plugin objects for one test: ``lcpress_plugins(obj, ...)`` returns the registry.

    Everything registered is unregistered when the test ends
    (:func:`lcpress.core.registry.using_plugins`).
    """
    from lcpress.core.registry import using_plugins

    with contextlib.ExitStack() as stack:
        yield lambda *plugins: stack.enter_context(using_plugins(*plugins))
