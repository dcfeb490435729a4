"""``lcpress options``: every config key with its type, default, allowed range and meaning."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "options"
HELP = "list every config key with its default and meaning"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true", help="as markdown tables (docs/config.md)")


def run(args: argparse.Namespace) -> int:
    print(options_reference(markdown=args.markdown))
    return 0


def options_reference(markdown: bool = False) -> str:
    """Every config key with type, default, range and help (docs/config.md embeds the markdown form)."""
    from lcpress.cli.common import wrapped
    from lcpress.config import sections

    lines: list[str] = []
    for title, cls in sections():
        rows = cls.rows()
        if markdown:
            lines += [f"### `{title}`", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
            lines += [f"| `{r.name}` | {r.type.replace('|', 'or')} | `{_short(r.default)}` | {r.bounds} | {r.help} |"
                      for r in rows]
            lines.append("")
        else:
            lines.append(f"{title}:")
            lines += [f"  {r.name}: {r.type} = {_short(r.default)}" + (f"  ({r.bounds})" if r.bounds else "")
                      + "\n" + wrapped(r.help, "      ") for r in rows]
    lines.append("Scheme and cost-model options: `lcpress plugins --options`.")
    return "\n".join(lines)


def _short(default: Any) -> str:
    return "{…}" if isinstance(default, dict) else str(default)
