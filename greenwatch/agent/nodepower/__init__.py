"""Node power sources: one interface, one module per source, source errors translated at the edge.

The agent reads the whole node's meter beside the GPUs: HPE Cray EX ``pm_counters``
(:mod:`.pmcounters`), IPMI through ``ipmitool`` (:mod:`.ipmi`) and Redfish through DMTF's
client (:mod:`.redfish`), all behind :class:`NodePowerSource`.  :class:`NodePowerPoller`
reads them in a thread of its own; :class:`MeterCurve` turns readings into the energy of each
publishing window.  A source's own exceptions never leave its module: they become
:class:`NodePowerError` with a short, stable ``kind``.
"""

from greenwatch.agent.nodepower.factory import open_sources
from greenwatch.agent.nodepower.meter import MeterCurve
from greenwatch.agent.nodepower.poller import NodePowerPoller
from greenwatch.agent.nodepower.reading import SOURCE_NAMES, NodePowerError, NodePowerSource, NodeReading

__all__ = ["NodePowerError", "NodeReading", "NodePowerSource", "SOURCE_NAMES", "MeterCurve",
           "NodePowerPoller", "open_sources"]

