"""Docs stay in step with the code."""

from __future__ import annotations

from pathlib import Path

from lcpress.cli import options_reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_generated_from_the_code():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert options_reference(markdown=True) in doc, "run `lcpress options --markdown` and update docs/config.md"


def test_readme_starts_with_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block == [
        "pip install torch==2.13.0 && pip install -e '.[demo]' && lcpress demo",
        "pip install torch==2.13.0 && pip install -e '.[dev]' && python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci, ".ci/run must run the README's test command"


def test_every_hook_is_documented_with_its_signature_and_docstring():
    import inspect
    import re

    from lcpress import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("lcpress_")]
    assert hooks
    squash = lambda text: " ".join(text.split())  # noqa: E731 - compare text, not line breaks
    for name in hooks:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        heading = f"### `{name}({params})`"
        assert heading in doc, f"document {name} in docs/plugins.md under the heading {heading}"
        section = re.split(r"\n#{2,3} ", doc.split(heading, 1)[1], maxsplit=1)[0]
        docstring = inspect.cleandoc(getattr(hookspecs, name).__doc__)
        assert squash(docstring) in squash(section), (
            f"docs/plugins.md: the section of {name} must hold its docstring from toolkit/hookspecs.py verbatim"
        )


def test_every_hook_is_exercised_by_a_test():
    from lcpress import hookspecs

    sources = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    for name in (n for n in dir(hookspecs) if n.startswith("lcpress_")):
        assert f"def {name}(" in sources, f"no test implements {name}"


def _tutorial_module():
    """The blocks of docs/plugins.md headed ``# my_plugin.py``, as one module."""
    import re
    import types

    blocks = re.findall(r"```python\n(# my_plugin\.py.*?)```", (ROOT / "docs" / "plugins.md").read_text(), re.S)
    assert len(blocks) == 3, "docs/plugins.md builds my_plugin.py in three blocks (scheme, cost model, registration)"
    module = types.ModuleType("my_plugin")
    code = compile("\n".join(blocks), "docs/plugins.md", "exec", dont_inherit=True)  # no __future__ from here
    exec(code, module.__dict__)  # noqa: S102 - the docs' own code
    return module


def test_plugin_tutorial_passes_the_conformance_kit():
    from lcpress.testing import check_cost_model, check_scheme

    my_plugin = _tutorial_module()
    assert check_scheme(my_plugin.MyLowRank).passed[-2:] == ["state_roundtrip", "shared"]
    fixed = check_scheme(my_plugin.MyLowRank, {"rank": 4}, budgets=[{"rank": 1}, {"rank": 4}, {"rank": 8}])
    assert "budget_monotone" in fixed.passed
    assert len(check_cost_model(my_plugin.MyParams).passed) == 4


def test_plugin_tutorial_runs_from_its_config():
    import re

    import torch
    import yaml
    from torch import nn

    import lcpress

    my_plugin = _tutorial_module()
    config = yaml.safe_load(re.search(r"```yaml\n(# config\.yaml.*?)```", (ROOT / "docs" / "plugins.md").read_text(),
                                      re.S).group(1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    x = torch.randn(1, 3, 6, 6)
    with lcpress.core.registry.using_plugins(my_plugin):
        result = lcpress.compress(model, config, example_input=x, progress=False)
    assert set(result.layers["scheme"]) == {"my_low_rank"}
    assert result.history["cost_my_params"].iloc[-1] <= 0.5 * result.totals["params_before"]
    assert result.max_abs_error < 1e-4
    assert isinstance(model[3], nn.Sequential)  # the Linear became two thin layers
