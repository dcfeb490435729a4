"""``lcpress plugins``: every scheme, cost model, module class and command plugins provide, with their packages."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lcpress.cli.common import wrapped

NAME = "plugins"
HELP = "list every scheme and cost model, with the package it came from"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--options", action="store_true", help="also list each plugin's options")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def rows() -> list[dict[str, Any]]:
    """One entry per registered scheme, cost model, module class and command."""
    from lcpress.core.registry import get_registry

    registry = get_registry()
    out = []
    for kind, table in (("scheme", registry.schemes), ("cost model", registry.cost_models)):
        for name in sorted(table.classes):
            cls, origin = table.classes[name], table.origins[name]
            row = {"kind": kind, "name": name, "package": origin.package, "version": origin.version,
                   "plugin": origin.plugin, "class": f"{cls.__module__}.{cls.__qualname__}"}
            row["available"] = _availability(cls)
            if kind == "scheme":
                row["layers"] = _layers_text(cls)
            row["options"] = [[r.name, r.type, str(r.default), r.bounds, r.help] for r in cls.Options.rows()]
            out.append(row)
    for kind, names in (("module", registry.modules), ("command", registry.commands)):
        for name in sorted(names):
            origin = registry.origins[(kind, name)]
            out.append({"kind": kind, "name": name, "package": origin.package, "version": origin.version,
                        "plugin": origin.plugin})
    return out


def _availability(cls: Any) -> str:
    """"yes", or "no: why": a cost model's unavailable_reason(); a plugin that raises, or whose option defaults break
    their own declaration, is listed as unusable with its error, so the listing goes on for every other plugin."""
    from lcpress.core.costmodel import CostModel
    from lcpress.core.guard import plugin_call
    from lcpress.errors import LcpressError

    try:
        problem = cls.Options.default_problem()
        if problem:
            return f"no: {problem}"
        if not issubclass(cls, CostModel):
            return "yes"
        with plugin_call(cls, "in unavailable_reason()"):
            reason = cls().unavailable_reason()
    except LcpressError as exc:
        return f"no: {exc}"
    return "yes" if reason is None else f"no: {reason}"


def _layers_text(scheme: Any) -> str:
    """What a scheme compresses, in words: its layer kinds, or the whole model's channel groups."""
    if getattr(scheme, "scope", "layer") == "model":
        return "channel groups of the whole model"
    from lcpress.core.scheme import kind_names

    return ", ".join(kind_names(scheme.kinds))


def run(args: argparse.Namespace) -> int:
    found = rows()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    width = max(len(r["name"]) for r in found) + 2
    for kind in ("scheme", "cost model", "module", "command"):
        listed = [r for r in found if r["kind"] == kind]
        if not listed:
            continue
        print(f"{kind}s:")
        for r in listed:
            extra = f"  [{r['available']}]" if r.get("available", "yes") != "yes" else ""
            extra += f"  — {r['layers']}" if r.get("layers") else ""
            print(f"  {r['name']:<{width}}{r['package']} {r['version']}  ({r['plugin']}){extra}")
            if args.options:
                for name, tp, default, bounds, help_ in r.get("options", []):
                    allowed = f" ({bounds})" if bounds else ""
                    print(f"      {name}: {tp} = {default}{allowed}")
                    print(wrapped(help_, "          "))
    return 0
