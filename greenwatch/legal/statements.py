"""Customer statements (EnEfG §15): the energy and emissions attributable to each customer.

A customer is an account (from each job's ``job`` summary) or a user (configurable,
``facility.customer_unit``).  Per customer: IT energy (its GPU shares plus its share of the
hosts' CPU energy plus, where nodes have a meter, its share of the rest of the node), facility energy (IT energy x the PUE at the time, as the collector stored
it), location- and market-based emissions, embodied emissions of its jobs that ended in the
period, GPU-hours, the idle-allocated part of its energy, a monthly breakdown and its largest
jobs.  The energy no job holds (idle GPUs, host CPU time of no job, the rest of the node no job
is charged) is the unallocated rest, so
customers + unallocated = the IT energy greenwatch measured over the period.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from typing import Any

from greenwatch.carbon.energyfigures import gpu_hours, it_energy_j
from greenwatch.carbon.units import G_PER_KG
from greenwatch.carbon.units import kwh
from greenwatch.reports.source import SPAN_MARGIN_S
from greenwatch.legal.period import Period
from greenwatch.legal.itsplit import it_split
from greenwatch.legal.sitedata import JOB_FIELDS, NODE_FIELDS, JobKey, SiteData

__all__ = ["build_statements", "NO_ACCOUNT", "TOP_JOBS", "SUMMARY_LOOKAHEAD_S"]

#: The customer of a job whose summary names no account (or that has no summary yet).
NO_ACCOUNT = "(no account)"
#: Largest jobs listed per customer.
TOP_JOBS = 5
#: A job running at the end of the period is summarised when it ends: its summary (and account)
#: is looked for up to this long after the period (longer than any job runs).
SUMMARY_LOOKAHEAD_S = 366 * 86400.0


def _kwh(joules: float) -> float:
    # carbon.units.kwh also takes arrays; here a sum is always a scalar.
    return float(kwh(joules))


class _Accounts:
    """Each job's account: from the first summary of its id that ends after the month began."""

    def __init__(self, summaries: list[dict[str, Any]]) -> None:
        self.by_job: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for s in summaries:
            self.by_job[(str(s.get("cluster", "")), str(s.get("job", "")))].append(
                (int(s["time_ns"]), str(s.get("account") or "")))
        for v in self.by_job.values():
            v.sort()

    def account(self, cluster: str, job: str, month_start_s: float) -> str:
        """The account of ``job`` for the month starting at ``month_start_s``; NO_ACCOUNT when none is known."""
        runs = self.by_job.get((cluster, job), [])
        i = bisect.bisect_left(runs, (int((month_start_s - SPAN_MARGIN_S) * 1e9), ""))
        return (runs[i][1] or NO_ACCOUNT) if i < len(runs) else NO_ACCOUNT


def _figures(acc: dict[str, float]) -> dict[str, float]:
    return {
        "it_energy_kwh": _kwh(it_energy_j(acc["energy_j"], acc["host_energy_j"], acc["rest_j"])),
        "gpu_energy_kwh": _kwh(acc["energy_j"]),
        "host_energy_kwh": _kwh(acc["host_energy_j"]),
        "facility_energy_kwh": _kwh(acc["facility_energy_j"]),
        "co2_location_kg": acc["co2_g"] / G_PER_KG,
        "co2_market_kg": acc["co2_market_g"] / G_PER_KG,
        "gpu_hours": gpu_hours(acc["gpu_seconds"]),
        "idle_energy_kwh": _kwh(acc["idle_energy_j"]),
    }


def build_statements(data: SiteData, period: Period, unit: str = "account",
                     only: str | None = None) -> dict[str, Any]:
    """The statements of every customer in ``period`` (``only``: just that customer, totals still site-wide)."""
    if unit not in ("account", "user"):
        raise ValueError(f"customer unit must be 'account' or 'user', got {unit!r}")
    summaries = data.job_summaries(period.start_s, period.end_s + SUMMARY_LOOKAHEAD_S)
    accounts = _Accounts(summaries)
    per_customer: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(JOB_FIELDS, 0.0))
    per_month: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(JOB_FIELDS, 0.0))
    per_job: dict[tuple[str, JobKey], dict[str, float]] = defaultdict(lambda: dict.fromkeys(JOB_FIELDS, 0.0))
    node = dict.fromkeys(NODE_FIELDS, 0.0)
    months = period.months()
    for month in months:
        for key, sums in data.job_sums(month).items():
            cluster, job, user = key
            customer = user if unit == "user" else accounts.account(cluster, job, month.start_s)
            for target in (per_customer[customer], per_month[(customer, month.label)], per_job[(customer, key)]):
                for f in JOB_FIELDS:
                    target[f] += sums[f]
        for f, v in data.node_sums(month).items():
            if f in node:
                node[f] += v
    embodied: dict[str, float] = defaultdict(float)
    names: dict[tuple[str, str], str] = {}
    for s in summaries:
        t_s = int(s["time_ns"]) / 1e9
        names[(str(s.get("cluster", "")), str(s.get("job", "")))] = str(s.get("job_name") or "")
        if period.start_s <= t_s < period.end_s:
            customer = str(s.get("user", "")) if unit == "user" else (str(s.get("account") or "") or NO_ACCOUNT)
            embodied[customer] += float(s.get("embodied_g") or 0.0)

    customers = []
    for name in sorted(set(per_customer) | set(embodied)):
        if only is not None and name != only:
            continue
        acc = per_customer.get(name, dict.fromkeys(JOB_FIELDS, 0.0))
        jobs = sorted(((k, v) for (c, k), v in per_job.items() if c == name),
                      key=lambda kv: -it_energy_j(kv[1]["energy_j"], kv[1]["host_energy_j"], kv[1]["rest_j"]))
        customers.append({
            "customer": name,
            **_figures(acc),
            "embodied_kg": embodied.get(name, 0.0) / G_PER_KG,
            "jobs": len({(k[0], k[1]) for k, _ in jobs}),
            "months": [{"month": m.label, **_figures(per_month[(name, m.label)])} for m in months
                       if (name, m.label) in per_month],
            "top_jobs": [{"cluster": k[0], "job": k[1], "user": k[2], "name": names.get((k[0], k[1]), ""),
                          **_figures(v)} for k, v in jobs[:TOP_JOBS]],
        })
    customers_j = math.fsum(it_energy_j(v["energy_j"], v["host_energy_j"], v["rest_j"]) for v in per_customer.values())
    split = it_split(node)
    unallocated_j, measured_j = split.unallocated_j, split.measured_j
    start, end = period.iso()
    notes = [
        "IT energy is measured by greenwatch: each job's share of its GPUs' energy counters plus its share of the "
        "hosts' CPU energy (by CPU time), plus, where nodes have a meter, its share of the rest of the node "
        "(memory, network cards, fans, power supplies: the meter minus GPUs and CPUs). Facility energy is IT energy x the PUE at the time of use; emissions are "
        "facility energy x grid intensity at the time (location-based) and x the contractual factor (market-based).",
        "Embodied emissions are those of the jobs whose summary (their end) falls in the period.",
        "Energy greenwatch cannot see (network, storage, nodes without an agent, cooling) is in no statement; the "
        "site report (`greenwatch site-report`) sets it against the facility meters.",
    ]
    if unit == "account" and any(c == NO_ACCOUNT for c in per_customer):
        notes.append(f"'{NO_ACCOUNT}': jobs without a summary naming an account (still running, or no account in the "
                     "scheduler's events).")
    return {
        "kind": "customer-statements",
        "legal_basis": "EnEfG §15 (information of customers on the energy attributable to them), see docs/eu-reporting.md",
        "period": {"label": period.label, "from": start, "to": end},
        "customer_unit": unit,
        "source": data.description,
        "customers": customers,
        "totals": {
            "customers_it_energy_kwh": _kwh(customers_j),
            "unallocated_it_energy_kwh": _kwh(unallocated_j),
            "measured_it_energy_kwh": _kwh(measured_j),
            "measured_gpu_energy_kwh": _kwh(node["gpu_energy_j"]),
            "measured_host_energy_kwh": _kwh(node["host_energy_j"]),
            "measured_rest_of_node_kwh": _kwh(node["node_rest_j"]),
            "customers": len(set(per_customer) | set(embodied)),   # before the `only` filter: site-wide
        },
        "notes": notes,
    }
