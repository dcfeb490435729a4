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
