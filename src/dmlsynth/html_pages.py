"""Self-contained HTML versions of the results' markdown and CSV, for the Snakemake report.

The report shows an HTML result inside its own page but offers markdown and CSV only as downloads, so the
table and compare jobs also write ``summary.html``, ``table.html`` and ``comparison.html``: the same text
and numbers, the figures embedded (data URIs: the page needs no other file and no network), the style
scoped to the page's own ``<div class="dmlsynth-page">`` so that the report's workflow description can
include the summary as it is (``report/workflow.rst``).
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

import pandas as pd

PAGE_CLASS = "dmlsynth-page"
_STYLE = f"""
.{PAGE_CLASS} {{ font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.45; color: #222; }}
.{PAGE_CLASS} h1 {{ font-size: 1.5em; margin: 0.6em 0 0.4em; font-weight: 600; }}
.{PAGE_CLASS} h2 {{ font-size: 1.2em; margin: 1.2em 0 0.4em; font-weight: 600; }}
.{PAGE_CLASS} p {{ margin: 0.4em 0; max-width: 75em; }}
.{PAGE_CLASS} .scroll {{ overflow-x: auto; }}
.{PAGE_CLASS} table {{ border-collapse: collapse; margin: 0.5em 0; }}
.{PAGE_CLASS} th, .{PAGE_CLASS} td {{ border: 1px solid #ccc; padding: 2px 6px; white-space: nowrap; font-size: 13px; }}
.{PAGE_CLASS} th {{ background: #f0f0f0; font-weight: 600; }}
.{PAGE_CLASS} tr:nth-child(even) td {{ background: #fafafa; }}
.{PAGE_CLASS} img {{ max-width: 100%; height: auto; }}
.{PAGE_CLASS} code {{ background: #f4f4f4; padding: 0 3px; }}
"""


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _embed_images(body: str, base_dir: Path | None) -> str:
    """Local images (``src`` relative to ``base_dir``, the markdown file's folder) as data URIs."""
    if base_dir is None:
        return body

    def embed(match: re.Match) -> str:
        source = html.unescape(match.group(1))
        path = base_dir / source
        return f'src="{_data_uri(path)}"' if "://" not in source and path.is_file() else match.group(0)

    return re.sub(r'src="([^"]+)"', embed, body)


def page(title: str, body_html: str) -> str:
    """A complete HTML page around ``body_html``, its style scoped to the page's div."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f'<body><div class="{PAGE_CLASS}"><style>{_STYLE}</style>\n{body_html}\n</div></body></html>\n'
    )


def from_markdown(title: str, text: str, base_dir: str | Path | None = None) -> str:
    """The page of a markdown text (tables included), its local images embedded; wide tables scroll."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    body = body.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")
    return page(title, _embed_images(body, Path(base_dir) if base_dir is not None else None))


def from_frame(title: str, frame: pd.DataFrame, note: str, float_format: str = "{:.2f}") -> str:
    """The page of a table: a heading, a sentence on its units, every row and column (the file's own values)."""
    table = frame.to_html(index=False, na_rep="n/a", float_format=float_format.format, border=0, escape=True)
    return page(title, f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(note)}</p>\n<div class=\"scroll\">{table}</div>")
