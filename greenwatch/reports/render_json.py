"""The report as versioned JSON (specified field by field in docs/report-format.md).

Energies are kWh, emissions kg (``*_kg``) or g (SCI), times ISO 8601 UTC.  Values that
were not measured are ``null`` with the reason in ``methods``; NaN never appears.
"""

from __future__ import annotations

import json
import math
from typing import Any

from greenwatch.carbon.units import J_PER_KWH
from greenwatch.reports.figures import iso
from greenwatch.reports.model import RunReport

__all__ = ["to_dict", "render"]


def _kwh(j: float | None) -> float | None:
    return None if j is None else j / J_PER_KWH


def _clean(x: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def to_dict(r: RunReport, version: str = "", images: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON document as a dict (``images`` maps plot names to file names, when written)."""
    w = r.what_if
    # The rest of the node only where a node meter measured it (part of the IT energy and emissions).
    metered = r.node_rest_j is not None
    rest_kwh = {"rest_of_node": _kwh(r.node_rest_j)} if metered else {}
    rest_kg = {"rest_of_node_location_based": r.co2_rest_g / 1000} if metered else {}
    doc = {
        "schema_version": r.schema_version,
        "job_id": r.job_id,
        "start": iso(r.start),
        "end": iso(r.end),
        "duration_s": r.duration_s,
        "energy_kwh": {
            "gpu": _kwh(r.gpu_energy_j),
            "host": _kwh(r.host_energy_j),
            "host_dram": _kwh(r.dram_energy_j),
            "facility_overhead": _kwh(r.facility_overhead_j),
            "total": _kwh(r.total_energy_j),
            "idle_allocated": _kwh(r.idle_energy_j),
            **rest_kwh,
        },
        "co2_kg": {
            "location_based": r.co2_location_g / 1000,
            "market_based": r.co2_market_g / 1000,
            "embodied": r.embodied_g / 1000,
            "gpu_location_based": r.co2_gpu_g / 1000,
            "host_location_based": r.co2_host_g / 1000,
            "idle_allocated": r.idle_co2_g / 1000,
            **rest_kg,
        },
        "job": {
            "cluster": r.cluster, "user": r.user, "account": r.account, "partition": r.partition,
            "nodes": list(r.nodes), "gpus_by_model": dict(r.gpus_by_model), "gpu_count": r.gpu_count,
            "gpu_hours": r.gpu_hours,
        },
        "methods": {
            "time": r.time_method,
            "gpu_energy": r.gpu_energy_method,
            "host_energy": r.host_energy_method,
            "host_dram": r.dram_method,
            "facility_overhead": f"IT energy x (PUE - 1); {r.pue_source}",
            "embodied": "estimate: (GPU card + server share) x GPU-seconds / lifespan (SCI 1.1 M)",
        },
        "carbon_intensity": {
            "source": r.intensity_source,
            "resolution": r.intensity_resolution,
            "zone": r.intensity_zone,
            "mean_g_per_kwh": r.intensity_mean_g_per_kwh,
            "mean_method": r.intensity_mean_method,
            "coverage": r.intensity_coverage,
        },
        "market_based": {"factor_g_per_kwh": r.market_factor_g_per_kwh, "note": r.market_note},
        "pue": {"effective": r.pue_effective, "source": r.pue_source},
        "embodied": {
            "lifespan_years": r.embodied_lifespan_years,
            "by_model": [{"model": e.model, "gpu_hours": e.gpu_seconds / 3600, "per_gpu_kg": e.per_gpu_kg,
                          "kg": e.grams / 1000} for e in r.embodied],
            "sources": dict(r.embodied_sources),
        },
        "sci": {
            "per_run_g": r.sci_run_g,
            "per_unit_g": dict(r.sci_per_unit_g),
            "functional_units": dict(r.functional_units),
        },
        "gpus": [{
            "node": g.node, "uuid": g.uuid, "index": g.index, "model": g.model,
            "energy_kwh": g.energy_j / J_PER_KWH, "idle_energy_kwh": g.idle_energy_j / J_PER_KWH,
            "gpu_hours": g.gpu_seconds / 3600, "mean_power_w": g.mean_power_w, "peak_power_w": g.peak_power_w,
            "mean_util_pct": g.mean_util_pct, "peak_util_pct": g.peak_util_pct,
            "mean_mem_util_pct": g.mean_mem_util_pct, "samples": g.samples, "energy_method": g.energy_method,
        } for g in r.gpus],
        "equivalences": [dict(e) for e in r.equivalences],
        "what_if": {
            "available": w.available,
            "window_h": w.window_s / 3600,
            "best_start": iso(w.best_start) if w.available else None,
            "shift_h": w.shift_s / 3600 if w.available else None,
            "actual_mean_intensity_g_per_kwh": w.actual_mean_intensity_g_per_kwh,
            "best_mean_intensity_g_per_kwh": w.best_mean_intensity_g_per_kwh if w.available else None,
            "co2_kg": w.co2_best_g / 1000 if w.available else None,
            "saving_kg": w.saving_g / 1000 if w.available else None,
            "saving_pct": w.saving_pct if w.available else None,
            "note": w.note,
        },
        "run": dict(r.extra),
        "images": dict(images or {}),
        "notes": list(r.notes),
        "data_source": r.data_source,
        "generated_at": iso(r.generated_at),
        "generator": f"greenwatch {version}".strip(),
    }
    return _clean(doc)


def render(r: RunReport, version: str = "", images: dict[str, str] | None = None) -> str:
    """Pretty-printed JSON text ending with a newline."""
    return json.dumps(to_dict(r, version, images), indent=2, ensure_ascii=False) + "\n"
