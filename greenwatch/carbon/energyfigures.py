"""Figures derived from a job's (or a group of jobs') summed energy and emissions.

One definition each, for the per-job report, the campaign report and the customer
statements: IT energy, the facility overhead on top of it, GPU-hours and the energy-weighted
mean grid intensity.
"""

from __future__ import annotations

from greenwatch.carbon.units import J_PER_KWH

__all__ = ["it_energy_j", "facility_overhead_j", "gpu_hours", "mean_intensity_g_per_kwh"]


def it_energy_j(gpu_j: float, host_j: float | None, rest_j: float | None = None) -> float:
    """IT energy: the GPUs' energy plus the host CPU's plus, where a node meter measured it, the
    rest of the node (memory, NICs, fans, power supplies); None: not measured, counted as 0."""
    return gpu_j + (host_j or 0.0) + (rest_j or 0.0)


def facility_overhead_j(facility_j: float, gpu_j: float, host_j: float | None, rest_j: float | None = None) -> float:
    """Facility energy beyond the IT energy (cooling, power distribution)."""
    return facility_j - it_energy_j(gpu_j, host_j, rest_j)


def gpu_hours(gpu_seconds: float) -> float:
    """GPU-seconds as GPU-hours."""
    return gpu_seconds / 3600.0


def mean_intensity_g_per_kwh(co2_g: float, facility_j: float, fallback: float) -> float:
    """The energy-weighted mean intensity (emissions over facility energy); ``fallback`` when no
    energy was used, as there is nothing to weight by (the caller says what stands in)."""
    kwh = facility_j / J_PER_KWH
    return co2_g / kwh if kwh > 0 else fallback
