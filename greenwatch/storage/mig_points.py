"""The ``gpu_mig`` points of an accounted table: each MIG instance's share of its board's energy.

One point per MIG device and block (docs/data-model.md): tags ``cluster``, ``node``, ``gpu`` (the
board's UUID), ``mig`` (the device's ``MIG-`` UUID), ``gi``, ``ci``; fields ``energy_j``,
``slices``, ``board_slices`` and ``activity_measured`` (1 where the SM activity of every span of
it was measured, 0 where some was not and slices stood in for it).  And one ``job_mig`` point per
job and MIG device it held in a block: tags ``cluster``, ``node``, ``job``, ``gpu``, ``mig``;
fields ``energy_j`` and ``idle_energy_j`` (its share there, and the part of it while the device
was idle): which MIG devices a job used, as ``job_gpu`` says which boards.
Both are written for windows re-accounted from a carry too: like the job records, they are energy,
with the same keys.
Returned as plain tuples, so that :mod:`greenwatch.storage.records` wraps them in its records.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from greenwatch.attribution import LedgerTable

__all__ = ["MIG_MEASUREMENT", "JOB_MIG_MEASUREMENT", "mig_points"]

MIG_MEASUREMENT = "gpu_mig"
JOB_MIG_MEASUREMENT = "job_mig"

Point = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, float | int], ...], int]


def mig_points(table: LedgerTable, clusters_nodes: Sequence[tuple[str, str]]) -> list[Point]:
    """(measurement, tags, fields, time ns) of every MIG device of every block; ``clusters_nodes[k]``
    names block k's node."""
    split = table.mig
    if split is None:
        return []
    out: list[Point] = []
    ptr = split.inst_ptr.tolist()
    energy = split.energy_j.tolist()
    known = split.activity_known.tolist()
    for k, (cluster, node) in enumerate(clusters_nodes):
        gpus = table.gpus[int(table.gpu_ptr[k]):int(table.gpu_ptr[k + 1])]
        t_ns = int(table.end_us[k]) * 1000
        for i in range(ptr[k], ptr[k + 1]):
            m = split.instances[i]
            tags = (("cluster", cluster), ("node", node), ("gpu", gpus[m.gpu].uuid), ("mig", m.uuid),
                    ("gi", str(m.gi)), ("ci", str(m.ci)))
            fields: tuple[tuple[str, float | int], ...] = (
                ("energy_j", float(energy[i])), ("slices", m.slices), ("board_slices", m.board_slices),
                ("activity_measured", 1 if known[i] else 0))
            out.append((MIG_MEASUREMENT, tags, fields, t_ns))
    pair_block = np.searchsorted(split.inst_ptr, split.pair_inst, side="right") - 1
    for job, i, k, e, idle in zip(split.pair_jobs, split.pair_inst.tolist(), pair_block.tolist(),
                                  split.pair_energy_j.tolist(), split.pair_idle_j.tolist()):
        cluster, node = clusters_nodes[k]
        m = split.instances[i]
        board = table.gpus[int(table.gpu_ptr[k]) + m.gpu].uuid
        pair_tags = (("cluster", cluster), ("node", node), ("job", job.job_id), ("gpu", board), ("mig", m.uuid))
        out.append((JOB_MIG_MEASUREMENT, pair_tags, (("energy_j", float(e)), ("idle_energy_j", float(idle))),
                    int(table.end_us[k]) * 1000))
    return out
