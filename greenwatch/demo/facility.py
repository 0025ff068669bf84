"""The demo site's facility side: accounts and job summaries, and facility meter series.

So that `greenwatch statement` and `greenwatch site-report` run on the demo: each demo job
gets a ``job`` summary naming its account, and the site gets hourly meter CSVs (total and IT
energy, renewable supply, reused heat, water) plus a ``facility.toml`` pointing at them.  The
meters are synthetic and derived from what the demo measured: the IT meter sees a quarter more
than greenwatch (network and storage it cannot see), the facility draws the demo's PUE on top.
One hour of the water meter is left out on purpose, to show how a gap is reported.
"""

from __future__ import annotations

import math
from pathlib import Path

from greenwatch.carbon import load_embodied
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.collector.summaryfields import job_summary_fields
from greenwatch.demo.cluster import HOUR, DemoJob
from greenwatch.reports.jobdata import TOTAL_FIELDS
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.records import Record

__all__ = ["DEMO_ACCOUNTS", "write_job_summaries", "write_facility"]

#: The account (project) of each demo user.
DEMO_ACCOUNTS = {"alice": "proj-llm", "bob": "proj-vision", "carol": "proj-llm", "dave": "proj-vision",
                 "erin": "proj-hpo", "frank": "proj-hpo"}
#: Share of the IT meter that greenwatch measures in the demo (the rest: network, storage).
IT_SEEN = 0.8
RENEWABLE_SHARE = 0.6
REUSED_SHARE = 0.12
WATER_M3_PER_IT_KWH = 0.0018


def write_job_summaries(store: EmbeddedStore, jobs: list[DemoJob], t0: float, t_end: float) -> None:
    """One ``job`` record per demo job (tags cluster, job, user, account), from its stored records,
    with the fields the collector computes (:func:`greenwatch.collector.summaryfields.job_summary_fields`)."""
    model = load_embodied()
    # Every node's GPUs, not the first few points': a later node's model sets its jobs' embodied share.
    gpu_models = {str(p.get("gpu", "")): str(p.get("model", "")) for p in store.points("gpu") if p.get("model")}
    records = []
    for job in jobs:
        points = store.points("job_energy", job=job.job_id)
        if not points:
            continue
        sums = {f: math.fsum(float(p.get(f) or 0.0) for p in points) for f in TOTAL_FIELDS}
        gpu_seconds: dict[str, float] = {}
        for p in store.points("job_gpu", job=job.job_id):
            uuid = str(p.get("gpu", ""))
            gpu_seconds[uuid] = gpu_seconds.get(uuid, 0.0) + float(p.get("gpu_seconds") or 0.0)
        start = t0 + job.start_h * HOUR
        fields = job_summary_fields(sums, gpu_seconds, gpu_models, model, len(job.gpus), start,
                                    min(t_end, t0 + job.end_h * HOUR), job.node, job.name)
        tags = (("cluster", "demo"), ("job", job.job_id), ("user", job.user),
                ("account", DEMO_ACCOUNTS.get(job.user, "")), ("partition", "gpu"))
        end = min(t_end, t0 + job.end_h * HOUR)
        records.append(Record("job", tags, tuple(fields.items()), int(round(end * 1000)) * 1_000_000))
    store.write(records)


def write_facility(store: EmbeddedStore, out: Path, pue: float) -> Path:
    """Hourly meter CSVs derived from the demo's measurements, and ``facility.toml``; returns its path."""
    per_hour: dict[int, float] = {}
    for p in store.points("node_energy"):
        hour = int(p["time_ns"] // 10**9 // 3600 * 3600)
        per_hour[hour] = per_hour.get(hour, 0.0) + float(p.get("gpu_energy_j") or 0.0) + float(p.get("host_energy_j") or 0.0)
    hours = sorted(per_hour)
    it = {h: per_hour[h] / J_PER_KWH / IT_SEEN for h in hours}
    series = {
        "total_energy": ("kwh", {h: it[h] * pue for h in hours}),
        "it_energy": ("kwh", it),
        "renewable_energy": ("kwh", {h: it[h] * pue * RENEWABLE_SHARE for h in hours}),
        "reused_heat": ("kwh", {h: it[h] * pue * REUSED_SHARE for h in hours}),
        "water": ("m3", {h: it[h] * WATER_M3_PER_IT_KWH for k, h in enumerate(hours) if k != 1}),
    }
    lines = ["# Synthetic facility meters of `greenwatch demo` (docs/eu-reporting.md)", "[facility]",
             'name = "greenwatch demo site"', 'start_of_operation = "2019-05-01"', 'customer_unit = "account"']
    for key, (column, values) in series.items():
        path = (out / f"meter-{key}.csv").resolve()
        path.write_text(f"timestamp,{column}\n" + "".join(f"{h},{v:.6f}\n" for h, v in sorted(values.items())))
        lines.append(f'{key} = "{path}"')
    config = out / "facility.toml"
    config.write_text("\n".join(lines) + "\n")
    return config
