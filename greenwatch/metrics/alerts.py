"""greenwatch's alerts, defined once and written out for Prometheus and for Grafana.

Each :class:`Alert` is a PromQL condition over the metrics of :mod:`greenwatch.metrics.agent`
and :mod:`greenwatch.metrics.collector`, how long it must hold, and what an operator should do;
:func:`prometheus_rules` renders them for Prometheus (``rule_files:``), :func:`grafana_rules` as
Grafana-managed alert rules (file provisioning) that query the same Prometheus.  Thresholds are
the arguments of :func:`default_alerts`, so a site changes them in one place::

    python -m greenwatch.metrics.alerts > /etc/prometheus/rules/greenwatch.yml
    promtool check rules /etc/prometheus/rules/greenwatch.yml
    python -m greenwatch.metrics.alerts --grafana > /etc/grafana/provisioning/alerting/greenwatch.yaml
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

__all__ = ["Alert", "default_alerts", "grafana_rules", "prometheus_rules"]


@dataclass(frozen=True)
class Alert:
    """One alert: its condition, how long it must hold, how bad it is, and what to do."""

    name: str
    expr: str
    for_s: int
    severity: str          # "critical": data is being lost or not measured; "warning": it soon may be; "info"
    summary: str           # may use {{ $labels.x }} and {{ $value }}
    action: str


def default_alerts(*, no_sample_s: int = 300, backlog_messages: int = 500, spill_for_s: int = 600,
                   idle_hours: float = 4.0, idle_ratio: float = 0.01, agent_down_s: int = 300,
                   node_meter_stale_s: int = 300) -> list[Alert]:
    """The alerts with the given thresholds (defaults: docs/operations.md, "Alerts")."""
    return [
        Alert("GreenwatchGpuNoSample", f"time() - greenwatch_gpu_last_sample_timestamp_seconds > {no_sample_s}", 60,
              "critical", f"GPU {{{{ $labels.gpu_index }}}} on {{{{ $labels.node }}}} has given no reading for more "
              f"than {no_sample_s} s",
              "Its energy is not measured. Check the agent's log for the GPU's NVML error (fallen off the bus, "
              "driver reload) and `nvidia-smi` on the node."),
        Alert("GreenwatchAgentNotPublishing", "greenwatch_agent_broker_connected == 0", agent_down_s, "warning",
              "The agent on {{ $labels.instance }} has not been connected to the MQTT broker for "
              f"{agent_down_s} s",
              "Batches wait in its spool (greenwatch_agent_spool_bytes) and are published once the broker answers; "
              "check the broker and the node's network and credentials before the spool fills."),
        Alert("GreenwatchGpuWithoutEnergyCounter", "greenwatch_gpu_energy_counter_present == 0", 3600, "info",
              "GPU {{ $labels.gpu_index }} on {{ $labels.node }} has no energy counter",
              "Its energy is integrated from power readings (pre-Volta boards, some vGPU): less exact. "
              "Nothing to fix unless the model should have one (driver version)."),
        Alert("GreenwatchGpuCounterReset", "resets(greenwatch_gpu_energy_joules_total[1h]) > 0", 0, "info",
              "The energy counter of GPU {{ $labels.gpu_index }} on {{ $labels.node }} went back",
              "A driver reload or GPU reset. greenwatch's own accounting recovers; use increase() or rate() "
              "on the counter, never differences of raw values."),
        Alert("GreenwatchCollectorNotReady", "greenwatch_collector_ready == 0", agent_down_s, "critical",
              "Collector {{ $labels.instance }} is not connected to the broker or cannot write to InfluxDB",
              "Its /readyz says why. greenwatch_collector_influxdb_failing: see InfluxDB; "
              "greenwatch_collector_broker_connected: see the broker and the collector's credentials."),
        Alert("GreenwatchCollectorSpillGrowing",
              "greenwatch_collector_spill_files > 0 and deriv(greenwatch_collector_spill_bytes[10m]) > 0",
              spill_for_s, "warning", "Collector {{ $labels.instance }} spills to disk and the spill grows",
              "InfluxDB does not take writes: nothing is lost while the spill has room (collector.spill_max_bytes); "
              "fix InfluxDB and the spill drains by itself."),
        Alert("GreenwatchCollectorBacklog", f"greenwatch_collector_unacked_messages > {backlog_messages}", 600,
              "warning", "Collector {{ $labels.instance }} holds {{ $value }} unacknowledged messages",
              "Its writes are slow or failing; the broker queues the rest. Check InfluxDB's write latency, "
              "or add a collector to the share group."),
        Alert("GreenwatchRejectedMessages",
              "sum by (instance, reason) (increase(greenwatch_collector_rejected_messages_total[10m])) > 0", 0,
              "warning", "Collector {{ $labels.instance }} rejected messages ({{ $labels.reason }})",
              "The collector's log names the node; the health series collector_rejections in InfluxDB counts "
              "per node. docs/operations.md lists each reason and its cause."),
        Alert("GreenwatchInfluxWriteErrors", "increase(greenwatch_collector_write_errors_total[10m]) > 0", 600,
              "warning", "Collector {{ $labels.instance }} keeps failing to write to InfluxDB",
              "Records go to the spill meanwhile. Check InfluxDB (disk, the database or bucket exists, the token)."),
        Alert("GreenwatchRefusedLines", "increase(greenwatch_collector_refused_lines_total[1h]) > 0", 0, "warning",
              "InfluxDB refused points from collector {{ $labels.instance }}",
              "They are kept in the dead-letter file with InfluxDB's reason (docs/influxdb.md), usually a field "
              "type conflict from an older schema."),
        Alert("GreenwatchGpuAllocatedButIdle",
              f"max_over_time(greenwatch_gpu_utilization_ratio[{idle_hours:g}h]) < {idle_ratio:g} "
              f"and on (node, gpu_uuid) count by (node, gpu_uuid) "
              f"(greenwatch_gpu_job_info{{job_id!~\"nojob:.*\"}}) > 0", 0, "info",
              f"GPU {{{{ $labels.gpu_index }}}} on {{{{ $labels.node }}}} has been held by a job but idle for "
              f"{idle_hours:g} h",
              "The job's owner may have a stuck job or an over-sized allocation; greenwatch_gpu_job_info names it."),
        Alert("GreenwatchNodeMeterStale",
              f"time() - greenwatch_node_power_last_reading_timestamp_seconds > {node_meter_stale_s}", 60, "warning",
              f"The node meter ({{{{ $labels.source }}}}) of {{{{ $labels.node }}}} has given no reading for more "
              f"than {node_meter_stale_s} s",
              "The rest of the node (memory, NICs, fans, power supplies) is not measured meanwhile; GPU data is "
              "unaffected. The agent's log names the meter's error; check the BMC or pm_counters."),
        Alert("GreenwatchNodeMeterReadErrors",
              "sum by (instance, node, kind) (increase(greenwatch_node_power_read_errors_total[15m])) > 0", 0,
              "info", "Reads of the node meter of {{ $labels.node }} fail ({{ $labels.kind }})",
              "A preferred meter failing beside a working one costs nothing but its reads; with every meter "
              "failing, GreenwatchNodeMeterStale follows. auth: the BMC account or its password file; "
              "no-permission: docs/operations.md, \"Node meters\"."),
    ]


def _scalar(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: no YAML library needed, nothing misread.
    return json.dumps(value)


def prometheus_rules(alerts: list[Alert], group: str = "greenwatch") -> str:
    """A Prometheus rule file (YAML) with ``alerts`` as one group."""
    lines = ["# Generated by greenwatch.metrics.alerts; edit the thresholds there, not here.",
             "groups:", f"  - name: {_scalar(group)}", "    rules:"]
    for a in alerts:
        lines += [f"      - alert: {a.name}", f"        expr: {_scalar(a.expr)}", f"        for: {a.for_s}s",
                  "        labels:", f"          severity: {a.severity}", "        annotations:",
                  f"          summary: {_scalar(a.summary)}", f"          action: {_scalar(a.action)}"]
    return "\n".join(lines) + "\n"


def grafana_rules(alerts: list[Alert], datasource_uid: str = "prometheus", folder: str = "greenwatch",
                  group: str = "greenwatch", interval_s: int = 60) -> str:
    """Grafana alert-rule provisioning (YAML, ``apiVersion: 1``) with ``alerts`` as one rule group.

    Each rule queries the Prometheus data source ``datasource_uid`` with the alert's own PromQL
    (A, an instant query), takes each series' last value (B) and fires for every series that is
    there (C: ``is_number($B)``): the PromQL already holds the comparison, so a series exists
    exactly when Prometheus would fire.  No series is therefore "OK", not "no data".
    """
    lines = ["# Generated by greenwatch.metrics.alerts; edit the thresholds there, not here.",
             "apiVersion: 1", "groups:", "  - orgId: 1", f"    name: {_scalar(group)}",
             f"    folder: {_scalar(folder)}", f"    interval: {interval_s}s", "    rules:"]
    for a in alerts:
        # Grafana's $value is the text of every query's value; the alert's one value is B's.
        summary = a.summary.replace("{{ $value }}", "{{ $values.B.Value }}")
        lines += [f"      - uid: {_scalar(_grafana_uid(a.name))}", f"        title: {_scalar(a.name)}",
                  "        condition: C", "        data:",
                  "          - refId: A", "            relativeTimeRange: {from: 600, to: 0}",
                  f"            datasourceUid: {_scalar(datasource_uid)}",
                  f"            model: {{refId: A, expr: {_scalar(a.expr)}, instant: true, range: false}}",
                  "          - refId: B", "            datasourceUid: __expr__",
                  "            model: {refId: B, type: reduce, expression: A, reducer: last, "
                  "settings: {mode: dropNN}}",
                  "          - refId: C", "            datasourceUid: __expr__",
                  "            model: {refId: C, type: math, expression: \"is_number($B)\"}",
                  "        noDataState: OK", "        execErrState: Error", f"        for: {a.for_s}s",
                  "        labels:", f"          severity: {a.severity}", "        annotations:",
                  f"          summary: {_scalar(summary)}", f"          action: {_scalar(a.action)}"]
    return "\n".join(lines) + "\n"


def _grafana_uid(name: str) -> str:
    # Grafana rule uids: at most 40 characters of letters, digits, '-' and '_'; stable across renders.
    uid = "gw-" + "".join(("-" + c.lower()) if c.isupper() and i else c.lower() for i, c in enumerate(name))
    return uid.replace("greenwatch-", "", 1)[:40]


def main(argv: list[str]) -> str:
    """The rule file for ``python -m greenwatch.metrics.alerts [--grafana [--datasource-uid UID]]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m greenwatch.metrics.alerts",
                                     description="Write greenwatch's alert rules for Prometheus, or for Grafana.")
    parser.add_argument("--grafana", action="store_true", help="Grafana alert-rule provisioning instead")
    parser.add_argument("--datasource-uid", default="prometheus",
                        help="uid of the Grafana data source of the Prometheus that scrapes greenwatch")
    args = parser.parse_args(argv)
    alerts = default_alerts()
    return grafana_rules(alerts, args.datasource_uid) if args.grafana else prometheus_rules(alerts)


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:]))
