"""Records of the whole node's meter: the ``node`` measurement per window and each job's share of
the rest of the node (``job_node``), as docs/data-model.md describes them."""

from __future__ import annotations

from typing import Sequence

from greenwatch.attribution.nodeprice import RestPrice
from greenwatch.attribution.noderest import NodeSplit
from greenwatch.batch import JobInfo, NodePower
from greenwatch.storage.records import Record

__all__ = ["node_records"]


def node_records(cluster: str, node: str, power: NodePower, split: NodeSplit, jobs: Sequence[JobInfo],
                 gpu_j: float, cpu_j: float, price: RestPrice) -> list[Record]:
    """One ``node`` record for the window and one ``job_node`` record per job with a share (``jobs``
    and ``price``, the price of each job's share of the rest, aligned with ``split.job_total_j``),
    stamped with the window's end."""
    t_ns = power.end_us * 1000
    base = (("cluster", cluster), ("node", node))
    span_s = (power.end_us - power.start_us) / 1e6
    fields: list[tuple[str, float | int | str]] = [
        ("meter_j", split.meter_j), ("gpu_j", float(gpu_j)), ("cpu_j", float(cpu_j)), ("rest_j", split.rest_j),
        ("rest_allocated_j", sum(split.job_rest_j)), ("unallocated_j", split.unallocated_j),
        ("parts_scale", split.parts_scale), ("counter", int(power.counter)),
    ]
    if span_s > 0:
        fields.append(("meter_w", split.meter_j / span_s))
    # The meter's own parts are named apart from greenwatch's (cpu_j is RAPL or its estimate).
    fields += [(f"meter_{k}_j", float(v)) for k, v in sorted(power.parts_j.items())]
    flags = [*power.flags, *split.flags]
    if flags:
        fields.append(("flags", ",".join(flags)))
    out = [Record("node_power", (*base, ("source", power.source)), tuple(fields), t_ns)]
    for job, total, rest, facility, co2, co2_market in zip(jobs, split.job_total_j, split.job_rest_j,
                                                           price.facility_energy_j, price.co2_g, price.co2_market_g):
        out.append(Record("job_node", (*base, ("job", job.job_id), ("user", job.user or "unknown"),
                                       ("source", power.source)),
                          (("rest_j", rest), ("total_j", total), ("facility_energy_j", facility), ("co2_g", co2),
                           ("co2_market_g", co2_market)), t_ns))
    return out
