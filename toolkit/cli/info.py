"""``lcpress info FILE``: what a saved model file holds, read without building anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from lcpress.errors import LcpressError

NAME = "info"
HELP = "print the manifest of a saved model file"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a model file written by lcpress.save / lcpress compress (model.safetensors)")


def run(args: argparse.Namespace) -> int:
    from lcpress.io.modelfile import inspect

    report = inspect(_model_file(Path(args.file)))  # the checks lcpress.load makes, on the meta device: nothing allocated, nothing run
    manifest = report.manifest
    print(f"lcpress model file, written by lcpress {shown(manifest['lcpress_version'])} "
          f"(torch {shown(manifest['torch_version'])})")
    print(f"loads without the model's code: {'yes' if report.rebuildable else f'no ({shown(report.why_not)})'}")
    for layer in manifest.get("layers", []):
        state = "realized" if layer.get("realized") else f"dense ({shown(layer.get('reason', ''))})"
        print(f"  {shown(layer['name'])}: {shown(layer.get('scheme', ''))} {shown(form_text(layer.get('form')))} "
              f"— {state}")
    return 0


def shown(value: object) -> str:
    """A file's text as printable: a terminal control sequence in a forged file could rewrite the lines above."""
    text = str(value)
    return text if text.isprintable() else repr(text)


def _model_file(path: Path) -> Path:
    """A run folder stands for the model file it holds."""
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        raise LcpressError(f"{str(path)!r} is a folder without a model.safetensors; give a model file (a run folder "
                           f"holds one once its run has finished)")
    return path


def form_text(form: object) -> str:
    """A manifest's form as text: ``low_rank(rank=8) + sparse(nonzeros=40)`` for a form made of parts."""
    if not isinstance(form, dict):
        return "" if form is None else f"(unreadable form {form!r})"
    if "parts" in form:
        parts = form["parts"]
        return " + ".join(form_text(part) for part in parts) if isinstance(parts, list) else form_text(parts)
    fields = ", ".join(f"{k}={v}" for k, v in form.items() if k != "kind" and v is not None)
    return f"{form.get('kind', '')}({fields})" if fields else form.get("kind", "")
