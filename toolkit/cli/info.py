"""``lcpress info FILE``: what a saved model file holds, read without building anything."""

from __future__ import annotations

import argparse

NAME = "info"
HELP = "print the manifest of a saved model file"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")


def run(args: argparse.Namespace) -> int:
    from lcpress.io.modelfile import inspect

    report = inspect(args.file)  # the checks lcpress.load makes, on the meta device: nothing allocated, nothing run
    manifest = report.manifest
    print(f"lcpress model file, written by lcpress {manifest['lcpress_version']} (torch {manifest['torch_version']})")
    print(f"loads without the model's code: {'yes' if report.rebuildable else f'no ({report.why_not})'}")
    for layer in manifest.get("layers", []):
        state = "realized" if layer.get("realized") else f"dense ({layer.get('reason', '')})"
        print(f"  {layer['name']}: {layer.get('scheme', '')} {form_text(layer.get('form') or {})} — {state}")
    return 0


def form_text(form: dict) -> str:
    """A manifest's form as text: ``low_rank(rank=8) + sparse(nonzeros=40)`` for a form made of parts."""
    if "parts" in form:
        return " + ".join(form_text(part) for part in form["parts"])
    fields = ", ".join(f"{k}={v}" for k, v in form.items() if k != "kind" and v is not None)
    return f"{form.get('kind', '')}({fields})" if fields else form.get("kind", "")
