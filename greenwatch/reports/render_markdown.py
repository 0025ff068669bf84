"""The report as Markdown: readable as plain text, pasteable into a wiki or a paper's supplement."""

from __future__ import annotations

from greenwatch.reports.document import SECTIONS, blocks
from greenwatch.reports.model import RunReport

__all__ = ["SECTIONS", "render"]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(r: RunReport, version: str = "", images: dict[str, str] | None = None) -> str:
    """Markdown text; ``images`` maps ``power``/``intensity`` to PNG paths relative to the Markdown file."""
    lines: list[str] = []
    for b in blocks(r, version, None if images is None else tuple(images)):
        if b.kind == "h1":
            lines += [f"# {b.text}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "ul":
            lines += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "img":
            lines += [f"![{b.text}]({images[b.image]})", ""]  # type: ignore[index]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_cell(h) for h in b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
    return "\n".join(lines)
