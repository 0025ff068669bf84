"""Rendering a :class:`RunReport` to text and files (the plots are drawn once per report)."""

from __future__ import annotations

from pathlib import Path

from greenwatch.reports.model import RunReport

__all__ = ["FORMATS", "render", "write_report", "write_all_formats", "write_job_reports"]

#: Format name -> file suffix.
FORMATS = {"md": ".md", "html": ".html", "json": ".json", "csv": ".csv"}


def _version() -> str:
    from greenwatch import __version__

    return __version__


def _plots(report: RunReport) -> dict[str, bytes]:
    from greenwatch.reports.plots import intensity_png, power_png

    out = {}
    power = power_png(report)
    if power is not None:
        out["power"] = power
    out["intensity"] = intensity_png(report)
    return out


def render(report: RunReport, fmt: str, images: dict[str, bytes] | None = None,
           image_names: dict[str, str] | None = None) -> str:
    """The report as text in ``fmt`` (md, html, json, csv).

    HTML embeds ``images`` (PNG bytes; drawn here when not given); Markdown and JSON refer to
    ``image_names`` (file names next to the document).
    """
    if fmt == "md":
        from greenwatch.reports.render_markdown import render as md

        return md(report, _version(), image_names)
    if fmt == "html":
        from greenwatch.reports.render_html import render as html

        return html(report, _version(), images if images is not None else _plots(report))
    if fmt == "json":
        from greenwatch.reports.render_json import render as js

        return js(report, _version(), image_names)
    if fmt == "csv":
        from greenwatch.reports.render_csv import render as csv

        return csv(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _write_pngs(images: dict[str, bytes], directory: Path, stem: str) -> dict[str, str]:
    names = {}
    for key, data in images.items():
        name = f"{stem}-{key}.png"
        (directory / name).write_bytes(data)
        names[key] = name
    return names


def write_report(report: RunReport, fmt: str, out_path: str | Path) -> Path:
    """Write one format to ``out_path``; Markdown also writes its PNGs next to it (``<stem>-power.png``...)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = _plots(report) if fmt in ("md", "html") else {}
    names = _write_pngs(images, out.parent, out.stem) if fmt == "md" else None
    out.write_text(render(report, fmt, images, names), encoding="utf-8")
    return out


def write_all_formats(report: RunReport, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.md/.html/.json/.csv`` and the PNG plots into ``out_dir``; returns name -> path.

    Keys: ``md``, ``html``, ``json``, ``csv``, ``power_png`` (absent without GPU series), ``intensity_png``.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    images = _plots(report)  # drawn once, shared by every format
    names = _write_pngs(images, d, stem)
    paths: dict[str, Path] = {f"{k}_png": d / v for k, v in names.items()}
    for fmt, suffix in FORMATS.items():
        path = d / f"{stem}{suffix}"
        path.write_text(render(report, fmt, images, names), encoding="utf-8")
        paths[fmt] = path
    return paths


def write_job_reports(source, job_ids, out_dir: str | Path, **options) -> dict[str, dict[str, Path]]:
    """Build and write every format for each job into ``out_dir/<job_id>/``; returns job -> name -> path.

    ``source`` is a :class:`~greenwatch.reports.source.ReportSource`; ``options`` go to
    :func:`~greenwatch.reports.model.build_report` (``carbon=`` is required there).
    """
    from greenwatch.reports.model import build_report

    out: dict[str, dict[str, Path]] = {}
    for job_id in job_ids:
        report = build_report(source, str(job_id), **options)
        safe = "".join(c if c.isalnum() or c in "-_.:" else "_" for c in str(job_id)).replace(":", "_")
        out[str(job_id)] = write_all_formats(report, Path(out_dir) / safe)
    return out
