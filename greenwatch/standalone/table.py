"""One CSV table across runs (``greenwatch-runs/runs.csv``): a row per finished run, so a sweep sums.

Parallel runs append to the same file: each row is written under an exclusive ``flock`` on the
file, in one ``write``, and the header only by whoever finds the file empty.  A new table has the
columns of :data:`COLUMNS`; a row appended to an existing table follows that table's own header
(a table with other columns keeps them, so every row lines up with its header).
Energies in kWh and emissions in kg, full precision, dot decimal; ``rest_of_node_kwh`` is empty
where no node meter measured the rest of the node (``total_kwh`` includes it where one did).
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "TABLE_NAME", "append_run"]

#: The table's file name inside the folder that holds the run folders.
TABLE_NAME = "runs.csv"

COLUMNS = ("run", "folder", "start", "end", "duration_s", "exit_status", "ended_by", "gpus", "gpu_hours", "gpu_kwh",
           "host_kwh", "rest_of_node_kwh", "facility_overhead_kwh", "total_kwh", "co2_location_kg", "co2_market_kg",
           "co2_embodied_kg",
           "zone", "mean_intensity_g_per_kwh", "pue", "command")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def row_of(result: Any, folder: Path | None) -> dict[str, Any]:
    """The table row of a finished run (a :class:`~greenwatch.standalone.session.RunResult`)."""
    r = result.report
    e, c = result.energy_kwh, result.co2_kg
    return {
        "run": result.name, "folder": "" if folder is None else str(folder.absolute()),
        "start": _iso(r.start), "end": _iso(r.end), "duration_s": float(r.duration_s),
        "exit_status": r.extra.get("exit_status"), "ended_by": r.extra.get("ended_by"), "gpus": r.gpu_count,
        "gpu_hours": float(result.gpu_hours), "gpu_kwh": e["gpu"], "host_kwh": e["host"],
        "rest_of_node_kwh": e.get("rest_of_node"),
        "facility_overhead_kwh": e["facility_overhead"], "total_kwh": e["total"],
        "co2_location_kg": c["location_based"], "co2_market_kg": c["market_based"], "co2_embodied_kg": c["embodied"],
        "zone": r.intensity_zone, "mean_intensity_g_per_kwh": float(r.intensity_mean_g_per_kwh),
        "pue": float(r.pue_effective), "command": r.extra.get("command", ""),
    }


def _header(fd: int) -> list[str]:
    """The column names of the table open on ``fd`` (its first line; :data:`COLUMNS` if it has none)."""
    first = b""
    while b"\n" not in first:
        chunk = os.pread(fd, 4096, len(first))
        if not chunk:
            break
        first += chunk
    names = next(csv.reader([first.split(b"\n", 1)[0].decode("utf-8", "replace")]), [])
    return names or list(COLUMNS)


def append_run(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the table at ``path`` (created with its header); OSError if it cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = io.StringIO()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        if os.fstat(fd).st_size == 0:
            header: list[str] = list(COLUMNS)
            prefix = ",".join(COLUMNS) + "\n"
        else:
            header, prefix = _header(fd), ""
        csv.writer(line, lineterminator="\n").writerow([_cell(row.get(k)) for k in header])
        os.write(fd, (prefix + line.getvalue()).encode("utf-8"))
    finally:
        os.close(fd)
