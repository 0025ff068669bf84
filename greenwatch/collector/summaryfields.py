"""The fields of a ``job`` summary record computed from a job's summed records.

One computation for every writer of job summaries: the collector (from InfluxDB sums), the
demo (from its embedded store) and anything else that has the sums, so that a summary means
the same wherever it was written (docs/data-model.md, measurement ``job``).
"""

from __future__ import annotations

from typing import Mapping

from greenwatch.carbon import EmbodiedModel, embodied_g, sci_g
from greenwatch.carbon.energyfigures import mean_intensity_g_per_kwh
from greenwatch.carbon.units import J_PER_KWH

__all__ = ["NODE_REST_FIELDS", "job_summary_fields"]

#: The ``job_node`` fields a summary sums: the job's share of the rest of its nodes, its whole-node
#: energy and the rest's price (docs/data-model.md).
NODE_REST_FIELDS = ("rest_j", "total_j", "facility_energy_j", "co2_g", "co2_market_g")


def job_summary_fields(sums: Mapping[str, float], gpu_seconds_by_gpu: Mapping[str, float],
                       models: Mapping[str, str], embodied: EmbodiedModel, gpus: int, start_s: float | None,
                       end_s: float, nodes: str, name: str = "",
                       node_rest: Mapping[str, float] | None = None) -> dict[str, float | int | str]:
    """The summed and derived fields of a job's summary.

    ``sums``: the job's ``job_energy`` fields summed over its records, each of them (the caller
    names them: this module stays below the readers of the store);
    ``gpu_seconds_by_gpu``: its GPU-seconds per GPU uuid (``job_gpu``), priced for embodied
    emissions with each GPU's model from ``models`` (unknown: the model's default); ``gpus``: how
    many GPUs it held; ``start_s``/``end_s``: its span (no start: duration 0); ``node_rest``: its
    ``job_node`` fields (:data:`NODE_REST_FIELDS`) summed where a node meter was read on its nodes.
    The rest of the node is IT energy the job caused: its facility energy and emissions are part of
    the job's ``facility_energy_j``, ``co2_g``, ``co2_market_g`` and ``sci_g`` (``energy_j`` stays
    the GPUs' and ``node_rest_j`` states the rest apart).  Without ``node_rest`` every figure is the
    GPUs' and the host's alone.
    """
    fields: dict[str, float | int | str] = {k: float(v or 0.0) for k, v in sums.items()}
    grams = sum(float(embodied_g(embodied, models.get(g, ""), s)) for g, s in gpu_seconds_by_gpu.items())
    facility_j, co2_g = float(sums.get("facility_energy_j") or 0.0), float(sums.get("co2_g") or 0.0)
    if node_rest is not None:
        rest = {k: float(node_rest.get(k) or 0.0) for k in NODE_REST_FIELDS}
        facility_j += rest["facility_energy_j"]
        co2_g += rest["co2_g"]
        fields.update({"facility_energy_j": facility_j, "co2_g": co2_g,
                       "co2_market_g": float(sums.get("co2_market_g") or 0.0) + rest["co2_market_g"],
                       "node_rest_j": rest["rest_j"], "node_energy_j": rest["total_j"]})
    # A job without energy emitted nothing: its SCI is its embodied share, whatever the intensity.
    intensity = mean_intensity_g_per_kwh(co2_g, facility_j, 0.0)
    fields.update({
        "embodied_g": grams,
        "sci_g": sci_g(facility_j / J_PER_KWH, intensity, grams),
        "gpus": gpus,
        "duration_s": max(0.0, end_s - start_s) if start_s is not None else 0.0,
        "nodes": nodes,
    })
    if start_s is not None:
        fields["start_s"] = int(start_s)
    if name:
        fields["job_name"] = name  # not "name": InfluxQL clients use that key for the measurement
    return fields
