"""Embodied (manufacturing) emissions of GPUs and servers, and the SCI score.

Software Carbon Intensity (Green Software Foundation SCI 1.1, ISO/IEC 21031:2024)::

    SCI = (E * I + M) / R
    M   = TE * (time reserved / expected lifespan) * (resources reserved / total resources)

For one GPU, ``TE`` is the card's embodied emissions plus its share of the server's
(``server_kg / gpus_per_server``); the time reserved is the job's GPU-seconds. Shipped defaults
come from ``data/embodied.csv``; each figure is overridable.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

from .units import G_PER_KG, SECONDS_PER_YEAR

DEFAULT_GPUS_PER_SERVER: int = 8
"""GPUs in a typical HGX/DGX-class server; the server's embodied emissions are split over them."""

DEFAULT_LIFESPAN_YEARS: float = 4.0
"""Expected hardware lifespan suggested by the Green Software Foundation for SCI."""


@dataclass(frozen=True)
class EmbodiedRow:
    """One row of ``data/embodied.csv``."""

    kind: str
    model: str
    kg_co2e: float
    source: str


@lru_cache(maxsize=1)
def embodied_table() -> tuple[EmbodiedRow, ...]:
    """All rows of the shipped ``data/embodied.csv`` (cached)."""
    text = resources.files("greenwatch.carbon").joinpath("data", "embodied.csv").read_text(encoding="utf-8")
    return tuple(
        EmbodiedRow(r["kind"].strip(), r["model"].strip(), float(r["kg_co2e"]), r["source"].strip())
        for r in csv.DictReader(text.splitlines())
    )


@dataclass
class EmbodiedModel:
    """Embodied emissions per GPU model and per server, amortised over ``lifespan_years``.

    ``gpu_kg`` maps a model-name substring (case-insensitive, e.g. ``"A100"``) to kgCO2e and must
    hold ``"default"``; the longest matching key wins. ``server_kg`` is one server without its
    GPUs, shared by ``gpus_per_server`` GPUs.
    """

    gpu_kg: dict[str, float]
    server_kg: float
    gpus_per_server: int
    lifespan_years: float = DEFAULT_LIFESPAN_YEARS
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "default" not in self.gpu_kg:
            raise ValueError('gpu_kg needs a "default" entry')
        for name, kg in self.gpu_kg.items():
            if not math.isfinite(float(kg)) or float(kg) < 0:
                raise ValueError(f"embodied kg for GPU {name!r} must be >= 0, got {kg!r}")
        if not math.isfinite(float(self.server_kg)) or float(self.server_kg) < 0:
            raise ValueError(f"server_kg must be >= 0, got {self.server_kg!r}")
        if int(self.gpus_per_server) != self.gpus_per_server or self.gpus_per_server < 1:
            raise ValueError(f"gpus_per_server must be an integer >= 1, got {self.gpus_per_server!r}")
        if not (float(self.lifespan_years) > 0):
            raise ValueError(f"lifespan_years must be > 0, got {self.lifespan_years!r}")

    def gpu_key_for(self, gpu_model_name: str) -> str:
        """The ``gpu_kg`` entry that prices a GPU card: the longest key contained in the name, else ``default``."""
        name = gpu_model_name.lower()
        hits = [k for k in self.gpu_kg if k != "default" and k.lower() in name]
        return max(hits, key=len) if hits else "default"

    def gpu_kg_for(self, gpu_model_name: str) -> float:
        """kgCO2e of one GPU card (the entry :meth:`gpu_key_for` picks)."""
        return float(self.gpu_kg[self.gpu_key_for(gpu_model_name)])

    def per_gpu_kg(self, gpu_model_name: str) -> float:
        """Total embodied kgCO2e attributed to one GPU: card plus its share of the server."""
        return self.gpu_kg_for(gpu_model_name) + float(self.server_kg) / self.gpus_per_server


def embodied_g(model: EmbodiedModel, gpu_model_name: str, gpu_seconds: float | np.ndarray) -> float | np.ndarray:
    """SCI ``M`` in grams CO2e for ``gpu_seconds`` reserved on GPUs named ``gpu_model_name``.

    ``(TE_gpu + TE_server / gpus_per_server) * gpu_seconds / lifespan``, with the lifespan in
    Julian years (365.25 days). A scalar gives a float, an array an array of the same shape.
    """
    rate = model.per_gpu_kg(gpu_model_name) * G_PER_KG / (float(model.lifespan_years) * SECONDS_PER_YEAR)
    if isinstance(gpu_seconds, np.ndarray):
        return gpu_seconds.astype(np.float64, copy=False) * rate
    return float(gpu_seconds) * rate


_OVERRIDE_KEYS = {"gpu_kg", "server_kg", "gpus_per_server", "lifespan_years"}


def load_embodied(overrides: dict | None = None) -> EmbodiedModel:
    """Shipped defaults from ``embodied.csv``, with optional overrides.

    Defaults: GPU 150 kg (Cloud Carbon Footprint), A100 143 kg (EcoLogits/Boavizta), server
    without GPUs 3,000 kg (EcoLogits/Boavizta), 8 GPUs per server, 4-year lifespan. ``overrides``
    may hold ``gpu_kg`` (a dict merged into the per-model table, e.g. ``{"H100": 200}``),
    ``server_kg``, ``gpus_per_server`` and ``lifespan_years``; other keys raise ValueError.
    """
    rows = embodied_table()
    gpu_kg = {r.model: r.kg_co2e for r in rows if r.kind == "gpu"}
    server = [r for r in rows if r.kind == "server" and r.model == "default"]
    sources = {f"gpu:{r.model}": r.source for r in rows if r.kind == "gpu"}
    sources["server"] = server[0].source
    kwargs: dict = {
        "server_kg": server[0].kg_co2e,
        "gpus_per_server": DEFAULT_GPUS_PER_SERVER,
        "lifespan_years": DEFAULT_LIFESPAN_YEARS,
    }
    if overrides:
        unknown = set(overrides) - _OVERRIDE_KEYS
        if unknown:
            raise ValueError(f"unknown embodied override(s) {sorted(unknown)}; allowed: {sorted(_OVERRIDE_KEYS)}")
        for name, kg in (overrides.get("gpu_kg") or {}).items():
            gpu_kg[str(name)] = float(kg)
            sources[f"gpu:{name}"] = "operator override"
        for key in ("server_kg", "lifespan_years"):
            if key in overrides:
                kwargs[key] = float(overrides[key])
                if key == "server_kg":
                    sources["server"] = "operator override"
        if "gpus_per_server" in overrides:
            kwargs["gpus_per_server"] = int(overrides["gpus_per_server"])
    return EmbodiedModel(gpu_kg=gpu_kg, sources=sources, **kwargs)


def sci_g(
    energy_kwh: float,
    intensity_g_per_kwh: float,
    embodied_g: float,
    functional_units: float = 1.0,
) -> float:
    """Software Carbon Intensity in gCO2e per functional unit: ``(E * I + M) / R``.

    ``E`` is the energy of all reserved hardware in kWh (facility energy when PUE is included),
    ``I`` the location-based intensity, ``M`` the embodied grams, ``R`` the number of functional
    units (a run, tokens, images...). ``R <= 0`` or negative inputs raise ValueError.
    """
    r = float(functional_units)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"functional_units (R) must be > 0, got {functional_units!r}")
    for name, x in (("energy_kwh", energy_kwh), ("intensity_g_per_kwh", intensity_g_per_kwh), ("embodied_g", embodied_g)):
        if not math.isfinite(float(x)) or float(x) < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return (float(energy_kwh) * float(intensity_g_per_kwh) + float(embodied_g)) / r
