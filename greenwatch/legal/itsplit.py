"""How greenwatch's measured IT energy divides into the part attributed to jobs and the rest.

One formula for both the customer statements and the site report, so that the unallocated
energy the statements list beside the customers is the energy the site report calls
unallocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["ItSplit", "it_split"]


@dataclass(frozen=True)
class ItSplit:
    """Measured IT energy (J) = attributed to jobs + unallocated."""

    measured_j: float
    attributed_j: float
    unallocated_j: float


def it_split(node: Mapping[str, float]) -> ItSplit:
    """The split of ``node_energy`` sums (``gpu_energy_j``, ``allocated_energy_j``, ``host_energy_j``,
    ``host_unallocated_j``) and, where nodes have a meter, the rest of the node (``node_rest_j``:
    ``node_power.rest_j`` summed) and the part of it jobs were charged (``node_rest_allocated_j``).

    Unallocated is what is measured but not attributed, rather than the stored
    ``unallocated_energy_j``: that field and ``allocated_energy_j`` need not add up to the GPU
    energy of every batch, and the customers' sum plus the unallocated energy must equal the
    measured energy exactly.
    """
    measured = node.get("gpu_energy_j", 0.0) + node.get("host_energy_j", 0.0) + node.get("node_rest_j", 0.0)
    attributed = (node.get("allocated_energy_j", 0.0) + node.get("host_energy_j", 0.0)
                  - node.get("host_unallocated_j", 0.0) + node.get("node_rest_allocated_j", 0.0))
    return ItSplit(measured, attributed, measured - attributed)
