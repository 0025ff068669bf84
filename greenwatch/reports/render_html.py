"""The report as one self-contained HTML file: inline CSS, PNGs as base64 data URIs, no scripts.

It opens from a mail attachment or a job's working directory without any network access
and prints cleanly.
"""

from __future__ import annotations

import base64
import html

from greenwatch.reports.document import blocks
from greenwatch.reports.model import RunReport

__all__ = ["render"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 62rem;
       margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 3px solid #2ca02c; padding-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f6f3; }
td:nth-child(2) { white-space: nowrap; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
p.lead { font-size: 1.05rem; background: #f3f6f3; padding: .6rem .8rem; border-radius: 4px; }
footer { margin-top: 2rem; font-size: .8rem; color: #666; }
"""


def render(r: RunReport, version: str = "", images: dict[str, bytes] | None = None) -> str:
    """HTML text; ``images`` maps ``power``/``intensity`` to PNG bytes, embedded as data URIs."""
    images = images or {}
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>Carbon report: job {e(r.job_id)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    first_p = True
    for b in blocks(r, version, tuple(images)):
        if b.kind == "h1":
            parts.append(f"<h1>{e(b.text)}</h1>")
        elif b.kind == "h2":
            anchor = b.text.lower().replace(" ", "-")
            parts.append(f'<h2 id="{e(anchor)}">{e(b.text)}</h2>')
        elif b.kind == "p":
            parts.append(f'<p class="lead">{e(b.text)}</p>' if first_p else f"<p>{e(b.text)}</p>")
            first_p = False
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "img":
            data = base64.b64encode(images[b.image]).decode("ascii")
            parts.append(f'<figure><img alt="{e(b.text)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts += [f"<footer>greenwatch {e(version)} &middot; schema {r.schema_version}</footer>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
