"""Collector: decodes agent batches, accounts them and writes the records.

Entry points: :class:`Collector` (processing without I/O) and
``greenwatch.collector.service.run_collector`` (the MQTT + InfluxDB service).
"""

from greenwatch.collector.core import Collector, CollectorStats, Sink

__all__ = ["Collector", "CollectorStats", "Sink"]
