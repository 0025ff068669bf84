"""Per-run reports from a short demo run: every format for every job, numbers that equal
the store's own sums, the same report from InfluxDB, and the HTML form rendered by headless Chromium.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from greenwatch.attribution import CarbonContext
from greenwatch.carbon import AnnualIntensity, ConstantPue, SeriesIntensity, embodied_g, load_embodied
from greenwatch.demo import DemoOptions, run_demo
from greenwatch.reports import EmbeddedSource, InfluxSource, build_report
from greenwatch.reports.document import SECTIONS
from greenwatch.reports.render_csv import HEADER
from greenwatch.reports.render_json import to_dict
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.storage.influx import InfluxStore
from greenwatch.storage.records import Record

J_PER_KWH = 3.6e6
FORMATS = ("md", "html", "json", "csv")
REQUIRED_JSON = {"schema_version", "job_id", "start", "end", "duration_s", "energy_kwh", "co2_kg"}

#: Which keys of each measurement are tags (docs/data-model.md); used to copy the store into InfluxDB.
TAGS = {
    "gpu": ("cluster", "node", "gpu", "gpu_index", "model"),
    "job_energy": ("cluster", "node", "job", "user"),
    "job_gpu": ("cluster", "node", "job", "gpu"),
    "node_energy": ("cluster", "node"),
    "job": ("cluster", "job", "user", "account", "partition", "campaign"),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(DemoOptions(out=out, hours=1), progress=io.StringIO())
    return out, summary


def _carbon(out: Path) -> CarbonContext:
    """The demo's own carbon settings (its synthetic hourly series and PUE 1.2)."""
    intensity = SeriesIntensity(str(out / "demo-intensity.csv"), AnnualIntensity("DE"), zone="DE")
    return CarbonContext(intensity, ConstantPue(1.2), None)


def _load(out: Path, summary: dict, job: str, fmt: str) -> Path:
    return out / summary["reports"][job][fmt]


def test_demo_writes_every_format_for_every_job(demo):
    out, summary = demo
    jobs = [r["job_id"] for r in summary["jobs"]]
    assert sorted(summary["reports"]) == sorted(jobs) and len(jobs) >= 5
    for job in jobs:
        for fmt in FORMATS + ("intensity_png",):
            path = _load(out, summary, job, fmt)
            assert path.is_file() and path.stat().st_size > 500, (job, fmt)
            assert path.parent == out / "reports" / job
        # Every demo job holds a GPU, so every report has a power plot.
        assert _load(out, summary, job, "power_png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_schema(demo):
    out, summary = demo
    for job in summary["reports"]:
        doc = json.loads(_load(out, summary, job, "json").read_text())
        assert REQUIRED_JSON <= set(doc)
        assert doc["schema_version"] == 1 and doc["job_id"] == job
        start, end = (datetime.fromisoformat(doc[k].replace("Z", "+00:00")) for k in ("start", "end"))
        assert start.tzinfo is not None and (end - start).total_seconds() == pytest.approx(doc["duration_s"], abs=1)
        assert set(doc["energy_kwh"]) >= {"gpu", "host", "facility_overhead", "total"}
        assert set(doc["co2_kg"]) >= {"location_based", "market_based", "embodied"}
        e = doc["energy_kwh"]
        assert e["host"] is None and "not measured" in doc["methods"]["host_energy"]  # the demo has no host meter
        assert e["total"] == pytest.approx(e["gpu"] + e["facility_overhead"])
        assert doc["methods"]["gpu_energy"] == "measured (NVML energy counter)"
        assert "hourly" == doc["carbon_intensity"]["resolution"] and "demo-intensity.csv" in doc["carbon_intensity"]["source"]
        assert "no contractual emission factor" in doc["market_based"]["note"]
        assert {q["name"] for q in doc["equivalences"]} == {"car_km", "train_km", "flight_km", "tree_months"}
        assert all(q["source"] for q in doc["equivalences"])
        assert doc["what_if"]["available"] is True and doc["what_if"]["saving_pct"] >= 0
        assert doc["gpus"] and (doc["sci"]["per_run_g"] > 0) == (e["gpu"] > 0)  # 1003 starts as the 1 h demo ends
        assert doc["images"] == {"power": "report-power.png", "intensity": "report-intensity.png"}
        json.dumps(doc, allow_nan=False)  # no NaN anywhere


def test_numbers_equal_the_stores_sums(demo):
    """Recompute every headline figure from the raw points, independently of the report code."""
    out, summary = demo
    store = EmbeddedStore(out / "greenwatch.sqlite")
    model = load_embodied()
    try:
        for job in summary["reports"]:
            doc = json.loads(_load(out, summary, job, "json").read_text())
            je = store.points("job_energy", job=job)
            jg = store.points("job_gpu", job=job)
            total = lambda pts, f: sum(float(p.get(f, 0.0)) for p in pts)  # noqa: E731
            e, c = doc["energy_kwh"], doc["co2_kg"]
            assert e["gpu"] == pytest.approx(total(je, "energy_j") / J_PER_KWH, rel=1e-12)
            assert e["idle_allocated"] == pytest.approx(total(je, "idle_energy_j") / J_PER_KWH, rel=1e-12, abs=1e-15)
            assert e["facility_overhead"] == pytest.approx(
                (total(je, "facility_energy_j") - total(je, "energy_j") - total(je, "host_energy_j")) / J_PER_KWH,
                rel=1e-9)
            assert c["location_based"] == pytest.approx(total(je, "co2_g") / 1000, rel=1e-12)
            assert c["market_based"] == pytest.approx(total(je, "co2_market_g") / 1000, rel=1e-12)
            assert doc["job"]["gpu_hours"] == pytest.approx(total(je, "gpu_seconds") / 3600, rel=1e-12)
            # Per GPU: the job's share from job_gpu, the model from the gpu series; embodied per model.
            share: dict[str, float] = defaultdict(float)
            secs: dict[str, float] = defaultdict(float)
            for p in jg:
                share[p["gpu"]] += p["energy_j"]
                secs[p["gpu"]] += p["gpu_seconds"]
            assert {g["uuid"]: g["energy_kwh"] * J_PER_KWH for g in doc["gpus"]} == pytest.approx(dict(share))
            emb = 0.0
            for uuid, s in secs.items():
                name = store.points("gpu", gpu=uuid)[0]["model"]
                emb += embodied_g(model, name, s)
            assert c["embodied"] == pytest.approx(emb / 1000, rel=1e-12)
            meta = next(r for r in summary["jobs"] if r["job_id"] == job)
            assert e["gpu"] == pytest.approx(meta["energy_kwh"], rel=1e-12)
            assert doc["job"]["user"] == meta["user"] and doc["job"]["nodes"] == [meta["node"]]
            # Peak power is the largest per-batch maximum of the GPUs' series while the job held them.
            times = defaultdict(set)
            for p in jg:
                times[p["gpu"]].add(p["time_ns"])
            for g in doc["gpus"]:
                peaks = [p["power_max_w"] for p in store.points("gpu", gpu=g["uuid"]) if p["time_ns"] in times[g["uuid"]]]
                assert g["peak_power_w"] == pytest.approx(max(peaks))
    finally:
        store.close()


def test_csv_parses(demo):
    out, summary = demo
    for job in summary["reports"]:
        rows = list(csv.DictReader(io.StringIO(_load(out, summary, job, "csv").read_text())))
        assert tuple(rows[0].keys()) == HEADER
        by_key = {(r["section"], r["key"]): r for r in rows}
        doc = json.loads(_load(out, summary, job, "json").read_text())
        assert float(by_key[("energy", "gpu_kwh")]["value"]) == pytest.approx(doc["energy_kwh"]["gpu"])
        assert by_key[("energy", "host_kwh")]["value"] == ""  # not measured: empty, method says why
        assert float(by_key[("emissions", "location_kg")]["value"]) == pytest.approx(doc["co2_kg"]["location_based"])
        assert by_key[("job", "job_id")]["value"] == job
        gpu_rows = [r for r in rows if r["section"] == "gpu"]
        assert len({r["key"].rsplit("/", 1)[0] for r in gpu_rows}) == len(doc["gpus"])
        for r in rows:
            if r["unit"] in ("kWh", "kgCO2e", "W", "h", "%") and r["value"]:
                assert math.isfinite(float(r["value"])), r


def test_markdown_has_every_section(demo):
    out, summary = demo
    for job in summary["reports"]:
        path = _load(out, summary, job, "md")
        text = path.read_text()
        positions = [text.index(f"\n## {title}\n") for title in SECTIONS]
        assert positions == sorted(positions)
        assert text.startswith(f"# Carbon report: job {job}\n")
        for name in ("report-power.png", "report-intensity.png"):
            assert f"]({name})" in text and (path.parent / name).is_file()
        assert "kgCO2e" in text and "gCO2e/run" in text


def test_html_is_self_contained(demo):
    out, summary = demo
    for job in summary["reports"]:
        html = _load(out, summary, job, "html").read_text()
        assert "<script" not in html.lower()
        assert "http://" not in html and "https://" not in html and "file:" not in html
        assert html.count('src="data:image/png;base64,') == 2
        assert all(f">{title}</h2>" in html for title in SECTIONS)


def test_influx_source_gives_the_same_report(demo, influx_v2, influxdb):
    """Copy the demo's records into a real InfluxDB and build every report from both stores."""
    out, summary = demo
    bucket = influx_v2.new_bucket("reports")
    store = EmbeddedStore(out / "greenwatch.sqlite")
    influx = InfluxStore(influx_v2.url, influx_v2.token, influx_v2.org, bucket, query_url=influxdb.url)
    try:
        records = []
        for measurement, tag_keys in TAGS.items():
            for p in store.points(measurement):
                tags = tuple((k, str(p[k])) for k in tag_keys if p.get(k) not in (None, ""))
                fields = tuple((k, v) for k, v in p.items() if k not in tag_keys and k != "time_ns")
                records.append(Record(measurement, tags, fields, p["time_ns"]))
        for k in range(0, len(records), 5000):
            influx.write(records[k:k + 5000])
        carbon = _carbon(out)
        for job in summary["reports"]:
            a = to_dict(build_report(EmbeddedSource(store), job, carbon=carbon, now=0.0))
            b = to_dict(build_report(InfluxSource(influx), job, carbon=carbon, now=0.0))
            assert a.pop("data_source").startswith("embedded store")
            assert b.pop("data_source").startswith("InfluxDB")
            assert a == b, job
    finally:
        influx.close()
        store.close()


# -- headless Chromium ------------------------------------------------------------------------

def _chromium(page: Path, tmp: Path, name: str) -> tuple[Path, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:  # must fail, not skip: the rendered HTML is part of what a report is checked for
        pytest.fail("chromium is not installed (Debian package 'chromium'; scripts/setup-tests.sh installs it)")
    shot = tmp / f"{name}.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / (name + '-profile')}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", "--window-size=1200,2400", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return shot, proc.stderr


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_html_renders_in_headless_chromium(demo, tmp_path):
    out, summary = demo
    # The check must be able to fail: a page with a script error is caught by it.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>throw new Error("broken page")</script></body></html>')
    _, stderr = _chromium(bad, tmp_path, "bad")
    assert any("broken page" in line for line in _console_errors(stderr)), stderr[-2000:]

    shot, stderr = _chromium(_load(out, summary, "1001", "html"), tmp_path, "report-1001")
    assert _console_errors(stderr) == [], stderr[-3000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page is a few kB


# -- a job with more GPUs than a page can list -------------------------------------------------

class ManyGpus:
    """A point source for one job on 100 GPUs (13 nodes x 8, the last node partly), 3 batches each."""

    description = "synthetic: 100 GPUs"
    times = [1_700_000_000_000_000_000 + k * 5_000_000_000 for k in range(1, 4)]

    @staticmethod
    def gpu(k: int) -> tuple[str, str]:
        return f"n{k // 8:02d}", f"GPU-{k:08d}-0000-4000-8000-000000000000"

    def job_points(self, measurement, job_id):
        out = []
        for k in range(100):
            node, uuid = self.gpu(k)
            e = 100.0 + k  # GPU 99 uses the most, GPU 0 the least
            idle = e if k % 10 == 0 else 0.0  # every tenth GPU idle
            for t in self.times:
                base = {"time_ns": t, "cluster": "c", "node": node, "job": job_id}
                if measurement == "job_gpu":
                    out.append(dict(base, gpu=uuid, energy_j=e, idle_energy_j=idle, gpu_seconds=5.0))
                elif measurement == "job_energy" and k % 8 == 0:
                    out.append(dict(base, user="u", energy_j=8 * e, idle_energy_j=0.0, facility_energy_j=9.6 * e,
                                    co2_g=0.01, co2_market_g=0.01, gpu_seconds=40.0))
        return out

    def gpu_points(self, cluster, node, uuid, t0, t1):
        k = int(uuid[4:12])
        return [{"time_ns": t, "cluster": cluster, "node": node, "gpu": uuid, "gpu_index": str(k % 8),
                 "model": "NVIDIA H100 80GB HBM3", "power_w": 20.0 + k, "power_max_w": 30.0 + k,
                 "util_gpu_pct": 50.0, "util_mem_pct": 10.0, "samples": 50, "counter": 1}
                for t in self.times if t0 <= t <= t1]

    def node_points(self, cluster, node, t0, t1):
        return []


def test_a_job_with_many_gpus_is_summarised_in_markdown_and_html_and_listed_in_csv_and_json():
    from greenwatch.reports import render

    carbon = CarbonContext(AnnualIntensity("DE"), ConstantPue(1.2), None)
    report = build_report(ManyGpus(), "big", carbon=carbon, now=0.0)
    assert report.gpu_count == 100
    md = render(report, "md")
    assert "The job held 100 GPUs: too many to list here" in md
    gpus_section = md[md.index("\n## GPUs\n"):md.index("\n## Over time\n")]
    # Distribution, the 5 highest, the 5 lowest and the 10 idle GPUs: not 100 rows.
    assert len(re.findall(r"^\| n\d\d \|", gpus_section, re.M)) == 5 + 5 + 10
    assert "| energy (kWh) |" in gpus_section and "10 GPU(s) spent at least 50%" in gpus_section
    top = gpus_section.index("GPUs with the most energy")
    assert gpus_section.index("GPU-00000099"[:12], top) < gpus_section.index("GPUs with the least energy")
    html = render(report, "html")
    assert "too many to list here" in html and html.count("<tr>") < 60
    assert len(json.loads(render(report, "json"))["gpus"]) == 100
    csv_rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert len({r["key"].rsplit("/", 1)[0] for r in csv_rows if r["section"] == "gpu"}) == 100
