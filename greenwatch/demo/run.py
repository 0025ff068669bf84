"""``greenwatch demo``: a simulated cluster through the real agent and collector code, in one process.

Nothing external is needed: agents sample simulated GPUs on a simulated clock,
batches go through the real wire format over an in-memory hand-off, the real
collector accounts them and an embedded SQLite store keeps the records.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from greenwatch.agent.sampler import Sampler
from greenwatch.attribution import AttributionSettings, CarbonContext
from greenwatch.carbon import AnnualIntensity, ConstantPue, SeriesIntensity
from greenwatch.carbon.units import J_PER_KWH
from greenwatch.collector import Collector
from greenwatch.demo.cluster import DemoCluster, DemoScheduler, default_jobs
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.transport.wire import encode

__all__ = ["DemoOptions", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("greenwatch-demo")
    hours: float = 6.0
    sample_s: float = 1.0          # simulated seconds between GPU samples
    process_every_s: float = 10.0  # simulated seconds between process scans
    batch_s: float = 60.0          # simulated seconds per batch
    zone: str = "DE"
    pue: float = 1.2
    seed: int = 7


def _write_demo_intensity(path: Path, t0: float, hours: float, zone: str) -> None:
    """A synthetic hourly series around the zone's annual mean, lowest at midday (solar).

    Clearly labelled as synthetic in the reports: a real site supplies its own series.
    """
    mean = AnnualIntensity(zone).g_per_kwh
    start = math.floor(t0 / 3600) * 3600
    lines = ["timestamp,g_per_kwh"]
    for h in range(int(hours) + 26):
        t = start + h * 3600
        hour_of_day = (t % 86400) / 3600
        factor = 1.0 - 0.35 * math.exp(-((hour_of_day - 13) ** 2) / 8) + 0.15 * math.exp(-((hour_of_day - 19) ** 2) / 6)
        lines.append(f"{int(t)},{mean * factor:.1f}")
    path.write_text("\n".join(lines) + "\n")


def run_demo(opts: DemoOptions, progress: TextIO = sys.stderr) -> dict:
    """Run the simulation; returns the summary (also written to ``<out>/summary.json``)."""
    wall0 = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    db_path = opts.out / "greenwatch.sqlite"
    if db_path.exists():
        db_path.unlink()
    t0 = math.floor(time.time() / opts.batch_s) * opts.batch_s - opts.hours * 3600
    jobs = default_jobs()
    cluster = DemoCluster(t0, opts.hours, jobs, seed=opts.seed)
    series_path = opts.out / "demo-intensity.csv"
    _write_demo_intensity(series_path, t0, opts.hours, opts.zone)
    intensity = SeriesIntensity(str(series_path), AnnualIntensity(opts.zone), zone=opts.zone)
    carbon = CarbonContext(intensity, ConstantPue(opts.pue), None)
    store = EmbeddedStore(db_path)
    collector = Collector(AttributionSettings(), carbon, store, max_skew_s=opts.hours * 3600 + 3600)

    samplers = []
    for node in cluster.nodes:
        devices = cluster.devices(node)
        scheduler = DemoScheduler(cluster, node, {d.index: d.uuid for d in devices})
        samplers.append(Sampler("demo", node, devices, scheduler))

    steps = int(round(opts.hours * 3600 / opts.sample_s))
    per_batch = max(1, int(round(opts.batch_s / opts.sample_s)))
    per_scan = max(1, int(round(opts.process_every_s / opts.sample_s)))
    per_hour = max(1, int(round(3600 / opts.sample_s)))
    first_t = last_t = t0
    for k in range(steps + 1):
        cluster.clock.t = t0 + k * opts.sample_s
        for s in samplers:
            if k % per_scan == 0:
                s.sample_processes()
            s.sample_gpus()
        if k and k % per_batch == 0 or k == steps:
            for s in samplers:
                collector.handle(encode(s.cut(sent_us=int(cluster.clock.t * 1e6))), expect_node=("demo", s.builder.node))
            last_t = cluster.clock.t
        if k and k % per_hour == 0:
            print(f"  simulated {k // per_hour:>2}/{opts.hours:g} h   ({time.monotonic() - wall0:4.1f} s wall)",
                  file=progress, flush=True)

    summary = _summarise(store, cluster, jobs, collector, opts, first_t, last_t, intensity)
    # -- facility side for `greenwatch statement` / `site-report` (docs/eu-reporting.md) --
    from greenwatch.demo.facility import write_facility, write_job_summaries

    write_job_summaries(store, jobs, t0, last_t)
    summary["facility_config"] = str(write_facility(store, opts.out, opts.pue))
    # -- a training campaign over several of the jobs, one failed (docs/campaigns.md) --
    from greenwatch.carbon import market_basis_note
    from greenwatch.demo.campaign import write_demo_campaign

    summary["campaign"] = write_demo_campaign(store, opts.out, str(getattr(intensity, "source", "")),
                                              market_basis_note(None))
    summary["wall_seconds"] = round(time.monotonic() - wall0, 2)

    # -- per-job carbon reports: every format for every job, in <out>/reports/<job_id>/ --
    from greenwatch.reports import EmbeddedSource, write_job_reports

    written = write_job_reports(EmbeddedSource(store), [r["job_id"] for r in summary["jobs"]], opts.out / "reports",
                                carbon=carbon)
    summary["reports"] = {job: {name: str(path.relative_to(opts.out)) for name, path in paths.items()}
                          for job, paths in written.items()}
    summary["reports_wall_seconds"] = round(time.monotonic() - wall0 - summary["wall_seconds"], 2)
    # -- end of per-job reports --

    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    store.close()
    return summary


def _summarise(store: EmbeddedStore, cluster: DemoCluster, jobs, collector: Collector, opts: DemoOptions,
               t_first: float, t_last: float, intensity) -> dict:
    per_job = store.sum_by("job_energy", "job", ("energy_j", "idle_energy_j", "gpu_seconds", "co2_g", "facility_energy_j"))
    nodes = store.sum_by("node_energy", "node", ("gpu_energy_j", "allocated_energy_j", "unallocated_energy_j", "co2_g"))
    by_id = {j.job_id: j for j in jobs}
    rows = []
    for job_id, acc in sorted(per_job.items()):
        meta = by_id.get(job_id)
        rows.append({
            "job_id": job_id,
            "user": meta.user if meta else "",
            "name": meta.name if meta else "",
            "node": meta.node if meta else "",
            "gpus": len(meta.gpus) if meta else 0,
            "gpu_hours": acc["gpu_seconds"] / 3600,
            "energy_kwh": acc["energy_j"] / J_PER_KWH,
            "facility_energy_kwh": acc["facility_energy_j"] / J_PER_KWH,
            "idle_energy_kwh": acc["idle_energy_j"] / J_PER_KWH,
            "co2_kg": acc["co2_g"] / 1000,
        })
    gpu_total = sum(n["gpu_energy_j"] for n in nodes.values())
    unalloc = sum(n["unallocated_energy_j"] for n in nodes.values())
    truth = sum(cluster.energy_j(node, g, t_first, t_last) for node in cluster.nodes for g in range(cluster.gpus_per_node))
    return {
        "schema_version": 1,
        "simulated_hours": opts.hours,
        "start": _iso(t_first),
        "end": _iso(t_last),
        "nodes": len(cluster.nodes),
        "gpus": len(cluster.nodes) * cluster.gpus_per_node,
        "zone": opts.zone,
        "pue": opts.pue,
        "intensity_source": "synthetic hourly series around " + getattr(intensity.fallback, "source", opts.zone)
        if hasattr(intensity, "fallback") else getattr(intensity, "source", ""),
        "jobs": rows,
        "gpu_energy_kwh": gpu_total / J_PER_KWH,
        "jobs_energy_kwh": sum(r["energy_kwh"] for r in rows),
        "unallocated_energy_kwh": unalloc / J_PER_KWH,
        "true_gpu_energy_kwh": truth / J_PER_KWH,
        "co2_kg": sum(n["co2_g"] for n in nodes.values()) / 1000,
        "batches": collector.stats.batches,
        "samples": collector.stats.samples,
        "rejected": collector.stats.rejected_total,
    }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def format_table(summary: dict) -> str:
    """The per-job table printed at the end of the demo."""
    head = f"{'job':<6} {'user':<7} {'name':<19} {'GPUs':>4} {'GPU-h':>7} {'kWh':>8} {'idle kWh':>9} {'kgCO2e':>8}"
    lines = [head, "-" * len(head)]
    for r in summary["jobs"]:
        lines.append(f"{r['job_id']:<6} {r['user']:<7} {r['name'][:19]:<19} {r['gpus']:>4} {r['gpu_hours']:>7.2f} "
                     f"{r['energy_kwh']:>8.2f} {r['idle_energy_kwh']:>9.2f} {r['co2_kg']:>8.2f}")
    lines.append("-" * len(head))
    lines.append(f"{'jobs':<39} {'':>7} {summary['jobs_energy_kwh']:>8.2f}")
    lines.append(f"{'unallocated':<39} {'':>7} {summary['unallocated_energy_kwh']:>8.2f}")
    lines.append(f"{'all GPUs (measured)':<39} {'':>7} {summary['gpu_energy_kwh']:>8.2f}")
    lines.append(f"{'all GPUs (simulation truth)':<39} {'':>7} {summary['true_gpu_energy_kwh']:>8.2f}")
    return "\n".join(lines)

