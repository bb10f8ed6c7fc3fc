"""A report written once and rendered twice: Markdown (figures linked next to it) and one self-contained
HTML file (figures embedded as base64 ``data:`` URIs, so it can be mailed or opened anywhere).

A document is a list of blocks; text may use ``**bold**`` and ```code``` spans, rendered by both.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


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
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: Path  # a PNG next to the report
    caption: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> "Document":
        self.blocks.extend(blocks)
        return self


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out += ["| " + " | ".join(map(_md_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows] + [""]
        elif isinstance(b, Figure):
            out += [f"![{b.caption}]({b.path.name})", "", f"*{b.caption}*", ""]
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return "\n".join(out)


_SPANS = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"), (re.compile(r"`(.+?)`"), r"<code>\1</code>")]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, repl in _SPANS:
        text = pattern.sub(repl, text)
    return text


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
          "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #bbb;padding:.25rem .6rem;"
          "text-align:right}th:first-child,td:first-child{text-align:left}code{background:#f3f3f3;padding:0 .2rem}"
          "img{max-width:100%}figcaption{font-style:italic;font-size:.9rem}")


def to_html(doc: Document) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(doc.title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{_inline(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            out.append(f'<figure><img src="{_data_uri(b.path)}" alt="{html.escape(b.caption)}">'
                       f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_document(doc: Document, folder: Path, stem: str = "report") -> tuple[Path, Path]:
    """``folder/stem.md`` and ``folder/stem.html``, each written whole (``Location.write_bytes``)."""
    from ..data.storage import open_location

    location = open_location(str(folder))
    for suffix, text in ((".md", to_markdown(doc)), (".html", to_html(doc))):
        location.write_bytes(f"{stem}{suffix}", text.encode("utf-8"))
    return folder / f"{stem}.md", folder / f"{stem}.html"
