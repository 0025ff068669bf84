"""Prometheus/OpenMetrics exposition and readiness endpoints of the agent and the collector.

:mod:`~greenwatch.metrics.server` serves ``/metrics``, ``/readyz`` and ``/healthz`` on one
address; :mod:`~greenwatch.metrics.agent` and :mod:`~greenwatch.metrics.collector` read each
service's own counters when scraped, so nothing is counted twice.
"""
