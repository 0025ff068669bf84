"""The site KPIs along EN 50600-4-x (ISO/IEC 30134-x), one function each.

Each returns None where an input is missing or zero: a ratio is never made up.
"""

from __future__ import annotations

__all__ = ["pue", "ref", "erf", "wue_l_per_kwh", "LITRES_PER_M3"]

LITRES_PER_M3 = 1000.0


def pue(total_kwh: float | None, it_kwh: float | None) -> float | None:
    """Power usage effectiveness (EN 50600-4-2): total data-centre energy / IT equipment energy."""
    if total_kwh is None or not it_kwh:
        return None
    return total_kwh / it_kwh


def ref(renewable_kwh: float | None, total_kwh: float | None) -> float | None:
    """Renewable energy factor (EN 50600-4-3): renewable energy / total energy, at most 1.

    The standard caps REF at 1.00: renewable generation beyond the site's need does not count.
    """
    if renewable_kwh is None or not total_kwh:
        return None
    return min(1.0, renewable_kwh / total_kwh)


def erf(reused_kwh: float | None, total_kwh: float | None) -> float | None:
    """Energy reuse factor (EN 50600-4-6): energy reused outside the data centre / total energy."""
    if reused_kwh is None or not total_kwh:
        return None
    return reused_kwh / total_kwh


def wue_l_per_kwh(water_m3: float | None, it_kwh: float | None) -> float | None:
    """Water usage effectiveness (EN 50600-4-9): water input in litres / IT equipment energy in kWh."""
    if water_m3 is None or not it_kwh:
        return None
    return water_m3 * LITRES_PER_M3 / it_kwh
