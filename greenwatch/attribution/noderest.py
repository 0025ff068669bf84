"""The rest of the node: the node meter's energy beyond the GPUs and the CPU, split among jobs.

Per window, with the meter's energy ``E_node`` and the parts greenwatch measures itself (every
GPU's energy, attributed to jobs or left unallocated, and the host CPU energy, likewise)::

    rest = E_node - (sum of GPU energy + CPU energy)

``rest`` (memory, NICs, fans, disks, power-supply losses) is split by ``policy``:

* ``allocated`` (default): by each job's allocated share of the node (its GPU-seconds over the
  node's GPU-seconds in the window; on a node without GPUs its CPU share); the share no job holds
  stays unallocated;
* ``energy``: in proportion to the parts already attributed to each job, the unallocated parts
  taking their own proportion;
* ``unallocated``: all of it stays at node level.

Jobs and the unallocated remainder always add up to ``E_node`` (the unallocated figure is
computed last, as the meter minus the jobs).  Where the parts exceed the meter (a meter that
lags or is coarser than the GPU counters, or a meter error) ``rest`` would be negative: the
parts are then scaled down to the meter, ``rest`` is zero and the window is flagged
``parts-exceed-meter``; no energy is ever negative.  Without a meter the parts are returned as
they are and the rest of the node is not included (``flags == ("no-meter",)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:   # only for annotations: this module stays free of numba and numpy
    from greenwatch.attribution.ledger import BlockLedger
    from greenwatch.batch import NodePower

__all__ = ["POLICIES", "NodeSplit", "split_node", "allocated_shares", "split_ledger"]

POLICIES = ("allocated", "energy", "unallocated")


@dataclass(frozen=True)
class NodeSplit:
    """One window's node energy: per job (aligned with the inputs) and what no job is charged."""

    job_total_j: tuple[float, ...]      # parts (scaled if needed) + share of the rest
    job_rest_j: tuple[float, ...]       # the share of the rest alone
    unallocated_j: float                # meter - sum(job_total_j): unallocated parts and rest
    rest_j: float                       # the meter minus the parts, >= 0 (0 without a meter)
    meter_j: float                      # the meter's energy (NaN without a meter)
    parts_scale: float                  # 1.0, or meter / parts where the parts exceeded the meter
    flags: tuple[str, ...] = ()


def allocated_shares(held_s: Sequence[float], total_s: float) -> list[float]:
    """Each job's share of the node: the seconds it held its GPUs (or CPUs) over the node's total.

    Shares are clipped to [0, 1] and scaled so they never add up to more than 1."""
    if not total_s > 0:
        return [0.0] * len(held_s)
    return _bounded([h / total_s for h in held_s])


def _bounded(shares: Sequence[float]) -> list[float]:
    """Shares clipped to [0, 1] (non-finite ones: 0) and scaled so they add up to at most 1."""
    clipped = [min(max(x, 0.0), 1.0) if math.isfinite(x) else 0.0 for x in shares]
    total = math.fsum(clipped)
    return [x / total for x in clipped] if total > 1.0 else clipped


def split_node(meter_j: float | None, job_parts_j: Sequence[float], unallocated_parts_j: float,
               shares: Sequence[float], policy: str = "allocated") -> NodeSplit:
    """Reconcile one window: ``job_parts_j`` are each job's GPU + CPU energy, ``unallocated_parts_j``
    the GPU and CPU energy no job was charged, ``shares`` each job's allocated share of the node
    (see :func:`allocated_shares`).  Bad input (negative or non-finite energy, an unknown policy)
    raises ValueError naming it."""
    if policy not in POLICIES:
        raise ValueError(f"unknown node rest policy {policy!r}; the policies are {', '.join(POLICIES)}")
    if len(shares) != len(job_parts_j):
        raise ValueError(f"{len(shares)} shares for {len(job_parts_j)} jobs")
    for what, v in (("unallocated parts", unallocated_parts_j), *(("job parts", x) for x in job_parts_j)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{what} energy must be a finite number >= 0, got {v!r}")
    n = len(job_parts_j)
    if meter_j is None or math.isnan(meter_j):
        return NodeSplit(tuple(float(x) for x in job_parts_j), (0.0,) * n, float(unallocated_parts_j), 0.0,
                         math.nan, 1.0, ("no-meter",))
    if not (math.isfinite(meter_j) and meter_j >= 0):
        raise ValueError(f"node meter energy must be a finite number >= 0, got {meter_j!r}")
    parts = math.fsum(job_parts_j) + unallocated_parts_j
    flags: tuple[str, ...] = ()
    scale = 1.0
    if parts > meter_j:
        scale = meter_j / parts if parts > 0 else 0.0
        flags = ("parts-exceed-meter",)
    rest = max(0.0, meter_j - parts)
    scaled = [x * scale for x in job_parts_j]
    if policy == "allocated":
        weights = _bounded(shares)
    elif policy == "energy":
        weights = [x / parts for x in job_parts_j] if parts > 0 else [0.0] * n
    else:
        weights = [0.0] * n
    job_rest = [rest * w for w in weights]
    totals = [a + b for a, b in zip(scaled, job_rest)]
    jobs_sum = math.fsum(totals)
    if jobs_sum > meter_j:
        # Rounding alone can put the jobs a few ulps above the meter: take it from the largest.
        k = max(range(n), key=totals.__getitem__)
        totals[k] = max(0.0, totals[k] - (jobs_sum - meter_j))
        jobs_sum = math.fsum(totals)
    return NodeSplit(tuple(totals), tuple(job_rest), max(0.0, meter_j - jobs_sum), rest, float(meter_j), scale, flags)


def split_ledger(ledger: "BlockLedger", node_power: "NodePower | None", policy: str = "allocated") -> NodeSplit:
    """:func:`split_node` for one accounted window, its jobs in ``ledger.jobs`` order.

    A job's parts are its GPU energy and its host CPU energy; its allocated share is the
    GPU-seconds it held over the node's (GPUs x the meter's window), or on a node without GPUs
    its share of the host's CPU energy."""
    parts = [j.energy_j + j.host_energy_j for j in ledger.jobs]
    unallocated = max(0.0, ledger.unallocated_energy_j) + max(0.0, ledger.host_unallocated_j)
    if ledger.gpus:
        span_s = (node_power.end_us - node_power.start_us) / 1e6 if node_power is not None else 0.0
        shares = allocated_shares([j.gpu_seconds for j in ledger.jobs], len(ledger.gpus) * span_s)
    else:
        shares = allocated_shares([j.host_energy_j for j in ledger.jobs], ledger.host_energy_j)
    return split_node(None if node_power is None else node_power.energy_j, parts, unallocated, shares, policy)

