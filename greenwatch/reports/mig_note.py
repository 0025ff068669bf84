"""Which MIG devices a job used, for the report: from its ``job_mig`` points (docs/data-model.md).

A GPU the job used in MIG mode gets a note in its energy method: the job's energy there is its
share of the board's measured energy, split among the board's MIG devices by a model
(docs/methodology.md 3a), so the report says so and names the devices.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Iterable

from greenwatch.reports.jobdata import GpuStats

__all__ = ["MIG_NOTE", "mig_devices_by_gpu", "note_mig"]

MIG_NOTE = ("the board's energy split among its MIG devices by slices and SM activity "
            "(estimated, docs/methodology.md 3a)")


def mig_devices_by_gpu(points: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """``{(node, board UUID): [MIG device UUIDs]}`` from ``job_mig`` points (or rows grouped by those tags)."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in points:
        if p.get("mig"):
            out[(str(p.get("node", "")), str(p.get("gpu", "")))].add(str(p["mig"]))
    return {k: sorted(v) for k, v in out.items()}


def note_mig(gpus: list[GpuStats], devices: dict[tuple[str, str], list[str]]) -> list[GpuStats]:
    """``gpus`` with the MIG note on every GPU the job used through MIG devices."""
    if not devices:
        return gpus
    out = []
    for g in gpus:
        used = devices.get((g.node, g.uuid))
        if used:
            names = ", ".join(used)
            g = dataclasses.replace(g, energy_method=f"{g.energy_method}; on MIG device {names}: {MIG_NOTE}")
        out.append(g)
    return out
