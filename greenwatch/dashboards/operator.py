"""Operator overview: facility power, energy, carbon, waste, data freshness, collector health."""

from __future__ import annotations

from grafanalib.core import Dashboard, Templating, Time

from . import panels as p
from . import queries as q
from .queries import CLUSTER, NODE

UID = "greenwatch-operator"
TITLE = "greenwatch: operator overview"

# (panel title, refId) of targets that may legitimately return no data: the `job`
# measurement only exists once jobs have finished, and "recent reports" is empty when every
# node is silent.  (The collector writes its spill and backlog levels in every health
# record, 0 when healthy, so that panel always has data.)
MAY_BE_EMPTY = {
    ("Top accounts by CO2", "A"),
    ("Silent nodes", "B"),
    # Only boards in MIG mode write gpu_mig points.
    ("MIG device power", "A"),
    # Only nodes whose agent reads a node meter ([node_power]) write node_power points.
    ("Node power and its parts", "A"),
    ("Node meter per node", "A"),
    # ... and only their jobs have shares of the rest of the node (job_node).
    ("Top jobs by CO2", "B"),
    ("Top users by CO2", "B"),
}

STALE_VAR = "stale_after"


def _power_panels(lay: p.Layout) -> None:
    lay.row("Power and energy", "GPU (IT) power and facility power including PUE")
    lay.add(p.stat(
        "Facility power now",
        "Mean power over the last 5 minutes: IT = GPU energy reported by the agents, "
        "facility = IT energy x PUE (node_energy.facility_energy_j). This is the load the "
        "site is drawing right now.",
        p.WATT,
        [p.target(q.select([q.range_power("facility_energy_j", "facility"),
                            q.range_power("gpu_energy_j", "IT (GPU)")],
                           "node_energy", (CLUSTER,), rp=None))],
        time_from="5m", decimals=0), 6, 5)
    lay.add(p.stat(
        "Energy today",
        "Energy since local midnight: facility (with PUE) and IT (GPU) energy in kWh.",
        p.KWH,
        [p.target(q.select([q.kwh("facility_energy_j", "facility"),
                            q.kwh("gpu_energy_j", "IT (GPU)")],
                           "node_energy", (CLUSTER,), rp=q.RP_DAY))],
        time_from="now/d"), 5, 5)
    lay.add(p.stat(
        "Energy this month",
        "Energy since the first of the month: facility (with PUE) and IT (GPU) energy in kWh.",
        p.KWH,
        [p.target(q.select([q.kwh("facility_energy_j", "facility"),
                            q.kwh("gpu_energy_j", "IT (GPU)")],
                           "node_energy", (CLUSTER,), rp=q.RP_MONTH))],
        time_from="now/M", decimals=0), 5, 5)
    lay.add(p.stat(
        "CO2 today",
        "Emissions since local midnight, location-based (grid intensity where the energy "
        "was used) and market-based (after contractual instruments), in kgCO2e.",
        p.KG_CO2,
        [p.target(q.select([q.kg("co2_g", "location-based"), q.kg("co2_market_g", "market-based")],
                           "node_energy", (CLUSTER,), rp=q.RP_DAY))],
        time_from="now/d"), 4, 5)
    lay.add(p.stat(
        "CO2 this month",
        "Emissions since the first of the month, location- and market-based, in kgCO2e.",
        p.KG_CO2,
        [p.target(q.select([q.kg("co2_g", "location-based"), q.kg("co2_market_g", "market-based")],
                           "node_energy", (CLUSTER,), rp=q.RP_MONTH))],
        time_from="now/M", decimals=0), 4, 5)

    lay.add(p.timeseries(
        "Facility power",
        "Total IT (GPU) power and facility power (IT x PUE) over time, derived from the "
        "energy reported in each interval, so no sample is missed between points.",
        p.WATT,
        [p.target(q.select([q.power("facility_energy_j", "facility"),
                            q.power("gpu_energy_j", "IT (GPU)")],
                           "node_energy", (CLUSTER,), time_bucket=True, fill="null"))],
        interval="15s"), 12, 8)
    lay.add(p.timeseries(
        "Grid carbon intensity",
        "Grid carbon intensity applied to the energy of each cluster (location-based, "
        "gCO2e per kWh, weighted by energy: emissions over facility energy). Shifting flexible "
        "work to low-intensity hours cuts emissions.",
        p.G_CO2_PER_KWH,
        [p.target(q.select(f'sum("co2_g") * {q.J_PER_KWH} / sum("facility_energy_j") AS "intensity"', "node_energy",
                           (CLUSTER,), ("cluster",), time_bucket=True, fill="null"),
                  alias="$tag_cluster")]), 12, 8)
    lay.add(p.timeseries(
        "Power per node",
        "GPU power of each node (sum over its GPUs), stacked: shows which nodes draw the load "
        "and nodes that drop out.",
        p.WATT,
        [p.target(q.select(q.power("gpu_energy_j", "power"), "node_energy", (CLUSTER, NODE),
                           ("node",), time_bucket=True, fill="null"), alias="$tag_node")],
        interval="15s", stacked=True), 24, 9)


def _gpu_panels(lay: p.Layout) -> None:
    lay.row("GPUs", "Per-GPU power and utilisation of the selected nodes")
    for title, value, unit, scheme, what in (
        ("GPU power heatmap", q.power("energy_j", "power_w"), p.WATT, "Oranges",
         "Mean power of every GPU (one row per GPU, node/index), colour = watts. Hot rows next "
         "to cold ones show unbalanced or stuck work."),
        ("GPU utilisation heatmap", q.util_mean("util_gpu_pct", "util_gpu_pct"), p.PERCENT, "Greens",
         "GPU utilisation of every GPU (one row per GPU, node/index), colour = percent busy. "
         "Dark rows are GPUs doing nothing: allocated-but-idle or unallocated."),
    ):
        lay.add(p.heatmap(
            title, what + " Filter with the node variable on large sites.", unit,
            [p.target(q.select(value, "gpu", (CLUSTER, NODE),
                               ("gpu", "node", "gpu_index"), time_bucket=True, fill="null"),
                      alias="$tag_node/$tag_gpu_index")],
            scheme=scheme), 12, 10)


def _waste_panels(lay: p.Layout) -> None:
    lay.row("Waste", "Energy spent on GPUs that do no useful work")
    idle = ('SELECT "idle energy", "allocated energy", "idle share" FROM ('
            f'SELECT {q.kwh("idle_energy_j", "idle energy")}, '
            f'{q.kwh("energy_j", "allocated energy")}, '
            '100 * sum("idle_energy_j") / sum("energy_j") AS "idle share" '
            f'FROM {q.source("job_energy")} {q.where(CLUSTER)} GROUP BY "job", "user") '
            'WHERE "idle energy" > 0 GROUP BY "job", "user"')
    lay.add(p.table(
        "Allocated but idle GPUs",
        "Jobs holding GPUs that sat idle in the selected range, with the energy those idle GPUs "
        "used (kWh), the job's total GPU energy and the idle share. These are the jobs and "
        "users to talk to first: the energy bought nothing.",
        p.KWH,
        [p.target(idle, fmt=p.TABLE)],
        overrides=[p.unit_override("idle share", p.PERCENT), p.job_link(), p.user_link()],
        sort_by="idle energy"), 12, 9)
    lay.add(p.timeseries(
        "GPU power by allocation",
        "GPU power split by allocation: allocated to jobs, the part of that spent on idle "
        "allocated GPUs, and unallocated GPUs (powered but in no job).",
        p.WATT,
        [p.target(q.select([q.power("allocated_energy_j", "allocated"),
                            q.power("unallocated_energy_j", "unallocated")],
                           "node_energy", (CLUSTER,), time_bucket=True, fill="null")),
         p.target(q.select(q.power("idle_energy_j", "allocated but idle"), "job_energy",
                           (CLUSTER,), time_bucket=True, fill="null"), ref="B")],
        interval="15s"), 8, 9)
    lay.add(p.stat(
        "Unallocated energy",
        "Energy of GPUs not allocated to any job in the selected range (kWh) and its share of "
        "all GPU energy. High values suggest powering down or consolidating idle nodes.",
        p.KWH,
        [p.target(q.select([q.kwh("unallocated_energy_j", "unallocated"),
                            '100 * sum("unallocated_energy_j") / sum("gpu_energy_j") AS "share"'],
                           "node_energy", (CLUSTER,)))],
        overrides=[p.unit_override("share", p.PERCENT)]), 4, 9)


def _top_panels(lay: p.Layout) -> None:
    lay.row("Who emits", "Jobs, users and accounts ranked by emissions in the selected range")
    job_fields = [q.kg("co2_g", "CO2"), q.kg("co2_market_g", "CO2 market"),
                  q.kwh("energy_j", "IT energy"), q.kwh("facility_energy_j", "facility energy"),
                  q.hours("gpu_seconds", "GPU hours"), q.kwh("idle_energy_j", "idle energy")]
    money = [p.unit_override("CO2", p.KG_CO2), p.unit_override("CO2 market", p.KG_CO2),
             p.unit_override("GPU hours", p.GPU_HOURS)]
    lay.add(p.table(
        "Top jobs by CO2",
        "Jobs ranked by location-based emissions (kgCO2e) in the selected range, with "
        "market-based emissions, IT and facility energy, GPU-hours and idle energy; where the job's "
        "nodes read a node meter, its share of the rest of the node (kWh) and that share's emissions "
        "(kgCO2e; query B from job_node, merged into the job's row, as InfluxQL cannot join "
        "measurements): the job's emissions are CO2 plus rest of node CO2.",
        p.KWH,
        [p.target(q.select(job_fields, "job_energy", (CLUSTER,), ("job", "user")), fmt=p.TABLE),
         p.target(q.select([q.kwh("rest_j", "rest of node"), q.kg("co2_g", "rest of node CO2")],
                           "job_node", (CLUSTER,), ("job", "user")), ref="B", fmt=p.TABLE)],
        transformations=[{"id": "merge", "options": {}}],
        overrides=[*money, p.unit_override("rest of node CO2", p.KG_CO2), p.job_link(), p.user_link()],
        sort_by="CO2"), 12, 9)
    users = ('SELECT count("e") AS "jobs", sum("c") / 1000 AS "CO2", sum("e") / 3600000 AS '
             '"IT energy", sum("g") / 3600 AS "GPU hours", sum("i") / 3600000 AS "idle energy" '
             'FROM (SELECT sum("energy_j") AS "e", sum("co2_g") AS "c", sum("gpu_seconds") AS '
             f'"g", sum("idle_energy_j") AS "i" FROM {q.source("job_energy")} {q.where(CLUSTER)} '
             'GROUP BY "job", "user") GROUP BY "user"')
    lay.add(p.table(
        "Top users by CO2",
        "Users ranked by location-based emissions (kgCO2e) of their jobs in the selected "
        "range, with number of jobs, IT energy, GPU-hours and idle energy; where their jobs' nodes "
        "read a node meter, the jobs' shares of the rest of the node (kWh) and their emissions "
        "(kgCO2e; query B from job_node, merged into the user's row).",
        p.KWH,
        [p.target(users, fmt=p.TABLE),
         p.target(q.select([q.kwh("rest_j", "rest of node"), q.kg("co2_g", "rest of node CO2")],
                           "job_node", (CLUSTER,), ("user",)), ref="B", fmt=p.TABLE)],
        transformations=[{"id": "merge", "options": {}}],
        overrides=[*money, p.unit_override("rest of node CO2", p.KG_CO2),
                   p.unit_override("jobs", p.COUNT), p.user_link()], sort_by="CO2"), 6, 9)
    accounts = q.select([q.kg("co2_g", "CO2"), q.kg("embodied_g", "embodied"),
                         q.kwh("energy_j", "IT energy"), q.hours("gpu_seconds", "GPU hours"),
                         'count("energy_j") AS "jobs"'],
                        "job", (CLUSTER,), ("account",))
    lay.add(p.table(
        "Top accounts by CO2",
        "Accounts (projects) ranked by the emissions of their finished jobs (job summaries), "
        "operational and embodied, in kgCO2e. Empty until jobs have finished in the range.",
        p.KWH,
        [p.target(accounts, fmt=p.TABLE)],
        overrides=[*money, p.unit_override("embodied", p.KG_CO2), p.unit_override("jobs", p.COUNT)],
        sort_by="CO2"), 6, 9)


def _health_panels(lay: p.Layout) -> None:
    lay.row("Data health", "Is the data complete and is the pipeline keeping up?")
    # The time of the node's last point in the range; from a rollup, the start of its bucket.
    last = q.select('last("gpu_energy_j") AS "energy"', "node_energy", (CLUSTER,), ("cluster", "node"))
    recent = ('SELECT count("gpus") AS "recent reports" FROM "node_energy" '
              f'WHERE time > now() - ${{{STALE_VAR}}}s GROUP BY "node"')
    lay.add(p.table(
        "Silent nodes",
        "Nodes that reported in the selected range but not in the last $stale_after seconds "
        "(dashboard variable), with the time of their last report (over long ranges, the start "
        "of the rollup minute or hour that holds it). Their energy is missing "
        "from every other panel: check the agent, the network and the broker.",
        p.AGO,
        [p.target(last, fmt=p.TABLE), p.target(recent, ref="B", fmt=p.TABLE)],
        transformations=[
            {"id": "joinByField", "options": {"byField": "node", "mode": "outer"}},
            {"id": "filterByValue", "options": {
                "filters": [{"config": {"id": "isNull", "options": {}},
                             "fieldName": "recent reports"}],
                "match": "any", "type": "include"}},
            {"id": "organize", "options": {"excludeByName": {"recent reports": True, "energy": True},
                                           "renameByName": {"Time": "last report",
                                                            "Time 1": "last report"}}},
        ],
        hide_time=False), 8, 8)
    rate = "non_negative_derivative(last(\"{0}\"), {1}) AS \"{0}\""
    lay.add(p.timeseries(
        "Collector throughput",
        "Messages, samples and batches the collector ingests per second (derivative of its "
        "cumulative counters, per collector instance). A drop to zero means no data arrives.",
        p.PER_SECOND,
        [p.target(q.select([rate.format(f, "1s") for f in ("messages", "samples", "batches")],
                           "collector", (), ("instance",), time_bucket=True, fill="none"),
                  alias="$tag_instance $col")],
        interval="20s"), 8, 8)
    lay.add(p.timeseries(
        "Collector errors",
        "Messages rejected (malformed, unknown or out-of-order) and failed database writes "
        "per minute. Anything above zero means data is being lost or retried.",
        p.PER_MINUTE,
        [p.target(q.select([rate.format(f, "1m") for f in ("rejected", "write_errors")],
                           "collector", (), ("instance",), time_bucket=True, fill="none"),
                  alias="$tag_instance $col")],
        interval="20s"), 4, 8)
    lay.add(p.timeseries(
        "Collector spill and backlog",
        "Bytes the collector spilled to disk because InfluxDB did not take its writes "
        "(spill_bytes), and counts: spilled chunks, records not yet durable (pending_bodies) "
        "and MQTT messages not yet acknowledged (unacked). All stay near 0 when healthy; a "
        "growing spill means writes fail, a growing backlog that the collector falls behind.",
        p.BYTES,
        [p.target(q.select('last("spill_bytes") AS "spill"', "collector", (), ("instance",),
                           time_bucket=True, fill="none"), alias="$tag_instance $col"),
         p.target(q.select(['last("spill_files") AS "spilled chunks"',
                            'last("pending_bodies") AS "pending records"',
                            'last("unacked") AS "unacked messages"'],
                           "collector", (), ("instance",), time_bucket=True, fill="none"),
                  ref="B", alias="$tag_instance $col")],
        overrides=[p.ref_unit_override("B", p.COUNT)],
        interval="20s"), 4, 8)


def _mig_panels(lay: p.Layout) -> None:
    lay.row("MIG", "Boards in MIG mode: each MIG device's share of its board's measured power")
    lay.add(p.timeseries(
        "MIG device power",
        "Mean power of every MIG device: its share of the board's measured energy, split by "
        "slices (idle part) and SM activity (active part; by slices where the board has no "
        "GPM). The split is an estimate (docs/methodology.md 3a); the devices of a board add up "
        "to its power less the idle part of its free slices. Empty where no board is in MIG mode.",
        p.WATT,
        [p.target(q.select(q.power("energy_j", "power"), "gpu_mig", (CLUSTER, NODE),
                           ("node", "gpu", "gi", "ci"), time_bucket=True, fill="null"),
                  alias="$tag_node $tag_gpu GI $tag_gi CI $tag_ci")],
        interval="15s"), 24, 8)


def _node_meter_panels(lay: p.Layout) -> None:
    lay.row("Node meter", "Nodes with a node meter ([node_power]): the whole node against the parts greenwatch measures")
    lay.add(p.timeseries(
        "Node power and its parts",
        "Mean power of the nodes' meters (BMC via Redfish or IPMI, HPE Cray pm_counters) next to "
        "the parts greenwatch measures itself: the GPUs and the host CPU (RAPL or its estimate), "
        "and the rest of the node (memory, NICs, fans, power supplies) = meter - GPU - CPU, never "
        "below 0 (docs/methodology.md 4a). GPU + CPU + rest is the meter except in windows where "
        "the parts exceeded it (flag parts-exceed-meter). Empty on nodes without a node meter.",
        p.WATT,
        [p.target(q.select([q.power("meter_j", "node meter"), q.power("gpu_j", "GPU"), q.power("cpu_j", "CPU"),
                            q.power("rest_j", "rest of the node")],
                           "node_power", (CLUSTER, NODE), time_bucket=True, fill="null"))],
        interval="15s"), 16, 8)
    lay.add(p.table(
        "Node meter per node",
        "Per node and meter: the meter's energy, the GPU and CPU parts, the rest of the node, the "
        "part of the rest charged to jobs (by [node_power] rest_policy) and what no job was charged "
        "(unallocated GPU, CPU and rest), in kWh, and the rest's share of the meter.",
        p.KWH,
        [p.target(q.select([q.kwh("meter_j", "meter"), q.kwh("gpu_j", "GPU"), q.kwh("cpu_j", "CPU"),
                            q.kwh("rest_j", "rest"), q.kwh("rest_allocated_j", "rest charged to jobs"),
                            q.kwh("unallocated_j", "unallocated"),
                            '100 * sum("rest_j") / sum("meter_j") AS "rest share"'],
                           "node_power", (CLUSTER, NODE), ("node", "source")), fmt=p.TABLE)],
        overrides=[p.unit_override("rest share", p.PERCENT)], sort_by="meter"), 8, 8)


def dashboard() -> Dashboard:
    lay = p.Layout()
    _power_panels(lay)
    _gpu_panels(lay)
    _waste_panels(lay)
    _top_panels(lay)
    _health_panels(lay)
    _mig_panels(lay)
    _node_meter_panels(lay)
    return Dashboard(
        title=TITLE,
        uid=UID,
        description="Facility power, energy and carbon of the GPU fleet, waste and data health.",
        tags=["greenwatch"],
        inputs=[p.datasource_input()],
        templating=Templating([
            p.datasource_variable(),
            p.query_variable("cluster", "Cluster", q.tag_values("node_energy", "cluster"),
                             multi=True, include_all=True),
            p.query_variable("node", "Node",
                             q.tag_values("node_energy", "node") + f" WHERE {CLUSTER}",
                             multi=True, include_all=True),
            p.textbox_variable(STALE_VAR, "Silent after (s)", "60"),
            *p.resolution_variables(q.RP_DAY, q.RP_MONTH),
        ]),
        panels=lay.panels,
        time=Time("now-6h", "now"),
        refresh="1m",
    )
