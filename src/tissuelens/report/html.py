"""HTML building blocks: escaped text, tables, embedded figures, sections and the page."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def fmt(value, digits: int = 4) -> str:
    """A number for a table cell: integers as is, floats to `digits` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return str(value)
        return f"{float(value):.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def note(text: str, kind: str = "info") -> str:
    """A plain-language box; kind: info, warn, missing."""
    return f'<p class="note {esc(kind)}">{esc(text)}</p>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def h3(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


def table(rows: list[dict] | None = None, columns: list[str] | None = None, frame=None, digits: int = 4,
          highlight: int | None = None) -> str:
    """A table from a list of dicts or a pandas DataFrame (index dropped); `highlight` marks one row."""
    if frame is not None:
        columns = [str(c) for c in frame.columns]
        rows = [dict(zip(columns, r)) for r in frame.itertuples(index=False, name=None)]
    rows = rows or []
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cls = ' class="best"' if i == highlight else ""
        cells = "".join(f"<td>{esc(fmt(r.get(c), digits))}</td>" for c in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def kv_table(mapping: dict, digits: int = 4) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v, digits))}</td></tr>" for k, v in mapping.items())
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


@dataclass
class Figures:
    """Collects a report's figures: each is embedded as base64 and, if `out_dir` is set, saved as PNG there
    (`<out_dir>/<section>/<name>.png`) for `snakemake --report`."""

    out_dir: Path | None = None
    dpi: int = 100
    saved: list[Path] = field(default_factory=list)

    def embed(self, fig, section: str, name: str, alt: str) -> str:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        plt.close(fig)
        return self.embed_png(buf.getvalue(), section, name, alt)

    def embed_png(self, data: bytes, section: str, name: str, alt: str) -> str:
        if self.out_dir is not None:
            path = Path(self.out_dir) / slug(section) / f"{slug(name)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.saved.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{b64}" alt="{esc(alt)}">'
                f"<figcaption>{esc(alt)}</figcaption></figure>")


@dataclass
class Section:
    id: str
    title: str
    body: str
    status: str = "ok"  # ok | skipped | note


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9;line-height:1.45}
header{background:#23314d;color:#fff;padding:18px 32px}header h1{margin:0;font-size:1.6em}header p{margin:4px 0 0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #dde1e8;padding:8px 32px;position:sticky;top:0;z-index:2}
nav a{margin-right:16px;color:#23314d;text-decoration:none;font-weight:600;font-size:.92em}
main{max-width:1180px;margin:0 auto;padding:12px 32px 48px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:18px 0;padding:8px 24px 18px}
section h2{border-bottom:2px solid #e6e9ef;padding-bottom:6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.88em}
th,td{border:1px solid #dde1e8;padding:3px 9px;text-align:left;vertical-align:top}thead th{background:#eef1f6}
table.kv th{background:#f6f7f9;font-weight:600}tr.best td{background:#e7f5e9;font-weight:600}
figure{display:inline-block;margin:6px 10px 12px 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #eceef2}figcaption{font-size:.82em;color:#556}
.note{padding:8px 12px;border-radius:6px;border-left:4px solid #6b8fd6;background:#eef3fc}
.note.warn{border-color:#d9822b;background:#fdf3e7}.note.missing{border-color:#9aa3b2;background:#f1f2f4}
pre{background:#f4f5f7;border:1px solid #dde1e8;padding:10px;white-space:pre-wrap;font-size:.85em;max-height:520px;overflow:auto}
#narrative figure img{max-width:448px}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
footer{color:#667;font-size:.8em;text-align:center;padding:12px}
"""


def page(title: str, subtitle: str, sections: list[Section], footer: str = "") -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}" class="report-section" data-status="{esc(s.status)}">'
        f"<h2>{esc(s.title)}</h2>\n{s.body}\n</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
        f"<main>{body}</main><footer>{esc(footer)}</footer></body></html>\n"
    )
