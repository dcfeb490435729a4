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


def test_every_hook_is_documented_with_its_signature():
    import inspect

    from lcpress import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("lcpress_")]
    assert hooks
    for name in hooks:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({params})`" in doc, f"document {name} in docs/plugins.md"
        assert getattr(hookspecs, name).__doc__.strip().splitlines()[0] in doc


def test_every_hook_is_exercised_by_a_test():
    from lcpress import hookspecs

    sources = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    for name in (n for n in dir(hookspecs) if n.startswith("lcpress_")):
        assert f"def {name}(" in sources, f"no test implements {name}"


def test_docs_examples_work():
    """The sign scheme and MACs cost model of docs/plugins.md, registered and run."""
    import re

    import torch
    from torch import nn

    import lcpress
    from lcpress.registry import using_plugins

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "plugins.md").read_text(), re.S)
    namespace: dict = {}
    exec(blocks[0] + blocks[1], namespace)  # noqa: S102 - the docs' own example code

    class Plugin:
        __name__ = "docs_plugin"
        lcpress_register_schemes = staticmethod(namespace["lcpress_register_schemes"])
        lcpress_register_cost_models = staticmethod(namespace["lcpress_register_cost_models"])

    with using_plugins(Plugin()):
        model = nn.Sequential(nn.Linear(8, 8))
        result = lcpress.compress(model, {"tasks": [{"layers": ["0"], "scheme": "sign", "cost": "macs"}],
                                          "schedule": {"steps": 0}}, example_input=torch.randn(1, 8))
    assert model[0].weight.abs().unique().numel() == 1
    assert result.history["cost_macs"].iloc[0] == 64
