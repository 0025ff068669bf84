"""Job view: energy, carbon, GPU-hours and idle waste of one job (``$job``)."""

from __future__ import annotations

from grafanalib.core import Dashboard, Templating, Time

from . import panels as p
from . import queries as q
from .queries import JOB

UID = "greenwatch-job"
TITLE = "greenwatch: job"

# The `job` summary point is written when the job finishes: running jobs have none.  The job's
# share of the rest of the node (`job_node`) exists only where its nodes read a node meter.
REST_PANELS = ("Energy", "Emissions", "Job power", "Cumulative energy", "Cumulative emissions", "Emission rate")
MAY_BE_EMPTY = {("Job summary (finished)", "A")} | {(title, "B") for title in REST_PANELS}

# InfluxQL cannot join measurements: each panel reads the job's GPU and host shares (job_energy)
# in query A and its share of the rest of the node (job_node) in query B; the job's total is the sum.
REST_NOTE = (" Where the job's nodes read a node meter, query B adds the job's share of the rest of the node "
             "(memory, NICs, fans, power supplies: job_node); the job's figure is the sum of both.")


def _headline(lay: p.Layout) -> None:
    lay.row("Headline", "Totals of the job in the selected time range: set the range to cover the job")
    lay.add(p.stat(
        "Energy",
        "GPU (IT) energy of the job's GPU shares and the facility energy including PUE, in kWh." + REST_NOTE,
        p.KWH,
        [p.target(q.select([q.kwh("energy_j", "IT"), q.kwh("facility_energy_j", "facility")],
                           "job_energy", (JOB,))),
         p.target(q.select([q.kwh("rest_j", "rest of node"), q.kwh("facility_energy_j", "rest of node facility")],
                           "job_node", (JOB,)), ref="B")], decimals=2), 6, 5)
    lay.add(p.stat(
        "Emissions",
        "Operational emissions of the job: location-based (grid intensity) and market-based, "
        "in kgCO2e." + REST_NOTE,
        p.KG_CO2,
        [p.target(q.select([q.kg("co2_g", "location-based"), q.kg("co2_market_g", "market-based")],
                           "job_energy", (JOB,))),
         p.target(q.select([q.kg("co2_g", "rest of node location-based"),
                            q.kg("co2_market_g", "rest of node market-based")], "job_node", (JOB,)), ref="B")],
        decimals=3), 6, 5)
    lay.add(p.stat(
        "GPU-hours",
        "GPU time allocated to the job (sum over its GPUs), in GPU-hours.",
        p.GPU_HOURS,
        [p.target(q.select(q.hours("gpu_seconds", "GPU-hours"), "job_energy", (JOB,)))],
        decimals=2), 6, 5)
    lay.add(p.stat(
        "Idle waste",
        "Energy of the job's allocated GPUs while they were idle (kWh) and its share of the "
        "job's energy: work to recover by right-sizing the request.",
        p.KWH,
        [p.target(q.select([q.kwh("idle_energy_j", "idle"),
                            '100 * sum("idle_energy_j") / sum("energy_j") AS "idle share"'],
                           "job_energy", (JOB,)))],
        overrides=[p.unit_override("idle share", p.PERCENT)], decimals=2), 6, 5)


def _over_time(lay: p.Layout) -> None:
    lay.row("Over time", "How the job used energy while it ran")
    lay.add(p.timeseries(
        "Job power",
        "Power of the job's GPU shares (IT) and with PUE (facility), from the energy "
        "attributed to the job in each interval." + REST_NOTE,
        p.WATT,
        [p.target(q.select([q.power("energy_j", "IT"), q.power("facility_energy_j", "facility")],
                           "job_energy", (JOB,), time_bucket=True, fill="null")),
         p.target(q.select([q.power("rest_j", "rest of node"), q.power("facility_energy_j", "rest of node facility")],
                           "job_node", (JOB,), time_bucket=True, fill="null"), ref="B")],
        interval="15s"), 12, 8)
    lay.add(p.timeseries(
        "Job power per node",
        "IT power the job drew on each of its nodes, stacked. Uneven lines point at "
        "load imbalance or a straggler node.",
        p.WATT,
        [p.target(q.select(q.power("energy_j", "power"), "job_energy", (JOB,), ("node",),
                           time_bucket=True, fill="null"), alias="$tag_node")],
        interval="15s", stacked=True), 12, 8)
    lay.add(p.timeseries(
        "Cumulative energy",
        "Energy used by the job so far (IT and facility), in kWh." + REST_NOTE,
        p.KWH,
        [p.target('SELECT cumulative_sum(sum("energy_j")) / 3600000 AS "IT", '
                  'cumulative_sum(sum("facility_energy_j")) / 3600000 AS "facility" '
                  f'FROM {q.source("job_energy")} {q.where(JOB)} GROUP BY time($__interval) fill(none)'),
         p.target('SELECT cumulative_sum(sum("rest_j")) / 3600000 AS "rest of node", '
                  'cumulative_sum(sum("facility_energy_j")) / 3600000 AS "rest of node facility" '
                  f'FROM {q.source("job_node")} {q.where(JOB)} GROUP BY time($__interval) fill(none)', ref="B")],
        legend_calcs=("lastNotNull",)), 8, 8)
    lay.add(p.timeseries(
        "Cumulative emissions",
        "Emissions of the job so far, location- and market-based, in kgCO2e." + REST_NOTE,
        p.KG_CO2,
        [p.target('SELECT cumulative_sum(sum("co2_g")) / 1000 AS "location-based", '
                  'cumulative_sum(sum("co2_market_g")) / 1000 AS "market-based" '
                  f'FROM {q.source("job_energy")} {q.where(JOB)} GROUP BY time($__interval) fill(none)'),
         p.target('SELECT cumulative_sum(sum("co2_g")) / 1000 AS "rest of node location-based", '
                  'cumulative_sum(sum("co2_market_g")) / 1000 AS "rest of node market-based" '
                  f'FROM {q.source("job_node")} {q.where(JOB)} GROUP BY time($__interval) fill(none)', ref="B")],
        legend_calcs=("lastNotNull",)), 8, 8)
    lay.add(p.timeseries(
        "Emission rate",
        "Location-based emissions per hour of the job: changes with its power and with the "
        "grid carbon intensity." + REST_NOTE,
        p.G_CO2_PER_H,
        [p.target(q.select(q.per_hour("co2_g", "CO2 rate"), "job_energy", (JOB,),
                           time_bucket=True, fill="null")),
         p.target(q.select(q.per_hour("co2_g", "rest of node CO2 rate"), "job_node", (JOB,),
                           time_bucket=True, fill="null"), ref="B")],
        interval="15s"), 8, 8)


def _details(lay: p.Layout) -> None:
    lay.row("Details", "Per node breakdown and the final job summary")
    lay.add(p.table(
        "Per node",
        "The job's GPU energy, emissions, GPU-hours, idle energy and host CPU energy on each node "
        "(host energy is the job's share of the node's CPU energy, by CPU time).",
        p.KWH,
        [p.target(q.select([q.kwh("energy_j", "IT energy"), q.kg("co2_g", "CO2"),
                            q.hours("gpu_seconds", "GPU hours"), q.kwh("idle_energy_j", "idle energy"),
                            q.kwh("host_energy_j", "host energy")],
                           "job_energy", (JOB,), ("node", "user")), fmt=p.TABLE)],
        overrides=[p.unit_override("CO2", p.KG_CO2), p.unit_override("GPU hours", p.GPU_HOURS),
                   p.user_link()],
        sort_by="IT energy"), 12, 8)
    summary = q.select(['"energy_j" / 3600000 AS "IT energy"', '"co2_g" / 1000 AS "CO2"',
                        '"co2_market_g" / 1000 AS "CO2 market"', '"embodied_g" / 1000 AS "embodied"',
                        '"sci_g" AS "SCI"', '"gpus"', '"gpu_seconds" / 3600 AS "GPU hours"',
                        '"duration_s" AS "duration"', '"nodes"',
                        '"node_energy_j" / 3600000 AS "node energy"', '"node_rest_j" / 3600000 AS "rest of node"',
                        '"node_meter"'],
                       "job", (JOB,), ("user", "account", "partition"))
    lay.add(p.table(
        "Job summary (finished)",
        "Summary written when the job finished: user, account, partition, nodes, GPUs, "
        "duration, energy, operational and embodied emissions and the SCI score "
        "(gCO2e per functional unit). Where the nodes read a node meter: the job's node energy (its "
        "GPU and CPU parts plus its share of the rest of the node) and that share of the rest, with the "
        "meter (node_meter; 'none': the rest of the node is not included). Empty while the job is still running.",
        p.KWH,
        [p.target(summary, fmt=p.TABLE)],
        overrides=[p.unit_override(n, p.KG_CO2) for n in ("CO2", "CO2 market", "embodied")]
        + [p.unit_override("SCI", p.G_CO2), p.unit_override("GPU hours", p.GPU_HOURS),
           p.unit_override("gpus", p.COUNT), p.unit_override("duration", p.SECONDS),
           p.unit_override("nodes", "string"), p.unit_override("node_meter", "string"), p.user_link()]), 12, 8)


def dashboard() -> Dashboard:
    lay = p.Layout()
    _headline(lay)
    _over_time(lay)
    _details(lay)
    return Dashboard(
        title=TITLE,
        uid=UID,
        description="Energy, emissions, GPU-hours and idle waste of one job.",
        tags=["greenwatch"],
        inputs=[p.datasource_input()],
        templating=Templating([
            p.datasource_variable(),
            p.query_variable("job", "Job", q.tag_values("job_energy", "job")),
            *p.resolution_variables(),
        ]),
        panels=lay.panels,
        time=Time("now-24h", "now"),
        refresh="1m",
    )
