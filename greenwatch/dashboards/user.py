"""User / account view: the jobs of ``$user`` with energy, emissions, SCI and idle waste."""

from __future__ import annotations

from grafanalib.core import Dashboard, Templating, Time

from . import panels as p
from . import queries as q
from .queries import USER

UID = "greenwatch-user"
TITLE = "greenwatch: user and account"

# Panels on the `job` measurement (one summary per finished job) are empty until jobs finish; the
# jobs' shares of the rest of the node (`job_node`) exist only where their nodes read a node meter.
REST_PANELS = ("Energy", "Emissions", "Jobs", "Power per user", "Emission rate per user")
MAY_BE_EMPTY = {("Finished jobs (SCI)", "A"), ("Accounts", "A")} | {(title, "B") for title in REST_PANELS}

# InfluxQL cannot join measurements: query A reads the jobs' GPU and host shares (job_energy),
# query B their shares of the rest of the node (job_node); a job's figure is the sum of both.
REST_NOTE = (" Where the jobs' nodes read a node meter, query B adds their share of the rest of the node "
             "(memory, NICs, fans, power supplies: job_node); the figure is the sum of both.")


def _headline(lay: p.Layout) -> None:
    lay.row("Headline", "Totals over the selected users' jobs in the time range")
    lay.add(p.stat(
        "Job count",
        "Number of jobs of the selected users that used GPUs in the range.",
        p.COUNT,
        [p.target('SELECT count("e") AS "jobs" FROM (SELECT sum("energy_j") AS "e" '
                  f'FROM {q.source("job_energy")} {q.where(USER)} GROUP BY "job")')], decimals=0), 5, 5)
    lay.add(p.stat(
        "Energy",
        "GPU (IT) energy of the users' jobs and facility energy including PUE, in kWh." + REST_NOTE,
        p.KWH,
        [p.target(q.select([q.kwh("energy_j", "IT"), q.kwh("facility_energy_j", "facility")],
                           "job_energy", (USER,))),
         p.target(q.select([q.kwh("rest_j", "rest of node"), q.kwh("facility_energy_j", "rest of node facility")],
                           "job_node", (USER,)), ref="B")], decimals=2), 5, 5)
    lay.add(p.stat(
        "Emissions",
        "Operational emissions of the users' jobs, location- and market-based, in kgCO2e." + REST_NOTE,
        p.KG_CO2,
        [p.target(q.select([q.kg("co2_g", "location-based"), q.kg("co2_market_g", "market-based")],
                           "job_energy", (USER,))),
         p.target(q.select([q.kg("co2_g", "rest of node location-based"),
                            q.kg("co2_market_g", "rest of node market-based")], "job_node", (USER,)), ref="B")],
        decimals=2), 5, 5)
    lay.add(p.stat(
        "GPU-hours",
        "GPU time allocated to the users' jobs, in GPU-hours.",
        p.GPU_HOURS,
        [p.target(q.select(q.hours("gpu_seconds", "GPU-hours"), "job_energy", (USER,)))],
        decimals=1), 4, 5)
    lay.add(p.stat(
        "Idle waste",
        "Energy of allocated GPUs left idle by the users' jobs (kWh) and its share of their "
        "energy: requesting fewer GPUs saves it outright.",
        p.KWH,
        [p.target(q.select([q.kwh("idle_energy_j", "idle"),
                            '100 * sum("idle_energy_j") / sum("energy_j") AS "idle share"'],
                           "job_energy", (USER,)))],
        overrides=[p.unit_override("idle share", p.PERCENT)], decimals=2), 5, 5)


def _jobs(lay: p.Layout) -> None:
    lay.row("Jobs", "Every job of the selected users")
    jobs = q.select([q.kwh("energy_j", "IT energy"), q.kg("co2_g", "CO2"),
                     q.hours("gpu_seconds", "GPU hours"),
                     'sum("co2_g") * 3600 / sum("gpu_seconds") AS "CO2 per GPU-hour"',
                     q.kwh("idle_energy_j", "idle energy"),
                     '100 * sum("idle_energy_j") / sum("energy_j") AS "idle share"'],
                    "job_energy", (USER,), ("job", "user"))
    rest = q.select([q.kwh("rest_j", "rest of node"), q.kg("co2_g", "rest of node CO2")],
                    "job_node", (USER,), ("job", "user"))
    lay.add(p.table(
        "Jobs",
        "The users' jobs in the range (running and finished) with IT energy (kWh), emissions "
        "(kgCO2e), GPU-hours, operational carbon intensity per GPU-hour (an SCI with one "
        "GPU-hour as functional unit, without embodied carbon) and idle waste; where the job's nodes "
        "read a node meter, its share of the rest of the node (kWh) and that share's emissions "
        "(kgCO2e, query B, merged into the job's row): the job's emissions are CO2 plus rest of node CO2.",
        p.KWH,
        [p.target(jobs, fmt=p.TABLE), p.target(rest, ref="B", fmt=p.TABLE)],
        transformations=[{"id": "merge", "options": {}}],
        overrides=[p.unit_override("CO2", p.KG_CO2), p.unit_override("rest of node CO2", p.KG_CO2),
                   p.unit_override("GPU hours", p.GPU_HOURS),
                   p.unit_override("CO2 per GPU-hour", p.G_CO2_PER_GPU_H),
                   p.unit_override("idle share", p.PERCENT), p.job_link()],
        sort_by="CO2"), 24, 9)
    finished = q.select(['"energy_j" / 3600000 AS "IT energy"', '"co2_g" / 1000 AS "CO2"',
                         '"embodied_g" / 1000 AS "embodied"', '"sci_g" AS "SCI"',
                         '"idle_energy_j" / 3600000 AS "idle energy"', '"node_rest_j" / 3600000 AS "rest of node"',
                         '"gpus"',
                         '"gpu_seconds" / 3600 AS "GPU hours"', '"duration_s" AS "duration"'],
                        "job", (USER,), ("job", "user", "account", "partition"))
    lay.add(p.table(
        "Finished jobs (SCI)",
        "Summaries of the users' finished jobs: account, partition, GPUs, duration, energy, "
        "operational and embodied emissions and the SCI score (gCO2e per functional unit); where "
        "the job's nodes read a node meter, its share of the rest of the node (kWh), which its "
        "emissions and SCI include. "
        "Empty until a job has finished in the range.",
        p.KWH,
        [p.target(finished, fmt=p.TABLE)],
        overrides=[p.unit_override("CO2", p.KG_CO2), p.unit_override("embodied", p.KG_CO2),
                   p.unit_override("SCI", p.G_CO2), p.unit_override("GPU hours", p.GPU_HOURS),
                   p.unit_override("gpus", p.COUNT), p.unit_override("duration", p.SECONDS),
                   p.job_link()],
        sort_by="CO2"), 16, 9)
    accounts = q.select([q.kg("co2_g", "CO2"), q.kg("embodied_g", "embodied"),
                         q.kwh("energy_j", "IT energy"), q.hours("gpu_seconds", "GPU hours"),
                         'count("energy_j") AS "jobs"'],
                        "job", (USER,), ("account",))
    lay.add(p.table(
        "Accounts",
        "The accounts (projects) the users' finished jobs were charged to, with their "
        "emissions (kgCO2e), energy and GPU-hours.",
        p.KWH,
        [p.target(accounts, fmt=p.TABLE)],
        overrides=[p.unit_override("CO2", p.KG_CO2), p.unit_override("embodied", p.KG_CO2),
                   p.unit_override("GPU hours", p.GPU_HOURS), p.unit_override("jobs", p.COUNT)],
        sort_by="CO2"), 8, 9)


def _over_time(lay: p.Layout) -> None:
    lay.row("Over time", "Power and emissions of the selected users")
    lay.add(p.timeseries(
        "Power per user",
        "IT power of each selected user's jobs, stacked." + REST_NOTE,
        p.WATT,
        [p.target(q.select(q.power("energy_j", "power"), "job_energy", (USER,), ("user",),
                           time_bucket=True, fill="null"), alias="$tag_user"),
         p.target(q.select(q.power("rest_j", "power"), "job_node", (USER,), ("user",),
                           time_bucket=True, fill="null"), ref="B", alias="$tag_user rest of node")],
        interval="15s", stacked=True), 12, 8)
    lay.add(p.timeseries(
        "Emission rate per user",
        "Location-based emissions per hour of each selected user's jobs, stacked." + REST_NOTE,
        p.G_CO2_PER_H,
        [p.target(q.select(q.per_hour("co2_g", "CO2 rate"), "job_energy", (USER,), ("user",),
                           time_bucket=True, fill="null"), alias="$tag_user"),
         p.target(q.select(q.per_hour("co2_g", "CO2 rate"), "job_node", (USER,), ("user",),
                           time_bucket=True, fill="null"), ref="B", alias="$tag_user rest of node")],
        interval="15s", stacked=True), 12, 8)


def dashboard() -> Dashboard:
    lay = p.Layout()
    _headline(lay)
    _jobs(lay)
    _over_time(lay)
    return Dashboard(
        title=TITLE,
        uid=UID,
        description="The jobs of one or more users with energy, emissions, SCI and idle waste.",
        tags=["greenwatch"],
        inputs=[p.datasource_input()],
        templating=Templating([
            p.datasource_variable(),
            p.query_variable("user", "User", q.tag_values("job_energy", "user"),
                             multi=True, include_all=True, all_value=".*"),
            *p.resolution_variables(),
        ]),
        panels=lay.panels,
        time=Time("now-7d", "now"),
        refresh="5m",
    )
