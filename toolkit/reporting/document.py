"""A small document model rendered both as Markdown and as one self-contained HTML file.

Reports are written twice — ``report.md`` for reading in a repository or a
terminal, ``report.html`` for a browser — and must say the same thing. So a
report is built once as a list of blocks (headings, paragraphs, bullet
lists, pandas tables, PNG images) and rendered by :meth:`Document.markdown`
(images as links to PNG files beside it) and :meth:`Document.html` (images
embedded as base64 ``data:`` URIs, so the one file can be mailed or archived
and still shows everything). Nothing here knows about lcpress runs.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Callable, Union

import pandas as pd

Formatter = Callable[[object], str]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    frame: pd.DataFrame
    formatter: Formatter = str


@dataclass
class Image:
    """A PNG: written as ``filename`` next to the Markdown file, embedded in the HTML."""

    filename: str
    alt: str
    data: bytes


Block = Union[Heading, Paragraph, Bullets, Table, Image]


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Document":
        self.blocks.extend(blocks)
        return self

    @property
    def images(self) -> list[Image]:
        return [b for b in self.blocks if isinstance(b, Image)]

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Heading):
                out += ["#" * block.level + " " + block.text, ""]
            elif isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                out += [markdown_table(block.frame, block.formatter), ""]
            elif isinstance(block, Image):
                out += [f"![{block.alt}]({block.filename})", ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            if isinstance(block, Heading):
                level = min(max(block.level, 1), 6)
                body.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
            elif isinstance(block, Paragraph):
                body.append(f"<p>{html.escape(block.text)}</p>")
            elif isinstance(block, Bullets):
                body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                body.append(html_table(block.frame, block.formatter))
            elif isinstance(block, Image):
                data = base64.b64encode(block.data).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(block.alt)}</figcaption></figure>")
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))


def markdown_table(frame: pd.DataFrame, formatter: Formatter = str) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency such as tabulate)."""
    header = [str(c) for c in frame.columns]
    rows = [[_cell(formatter(v)) for v in row] for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(frame: pd.DataFrame, formatter: Formatter = str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(f'<td class="{"num" if n else "txt"}">{html.escape(formatter(v))}</td>'
                        for v, n in zip(row, numeric))
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #1f2328; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }}
th, td {{ border: 1px solid #d0d7de; padding: 0.25em 0.6em; }}
th {{ background: #f6f8fa; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #57606a; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
