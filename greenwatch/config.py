"""The one TOML configuration file shared by every greenwatch service.

Every key is declared once in :data:`SCHEMA` with its type, default, check and
documentation; ``docs/configuration.md`` is generated from the same table (and a
test keeps them in sync), so a key cannot exist in the code without being
documented.  A bad file raises :class:`ConfigError`, which names the offending
key; the command line turns it into one error line and exit status 2.
"""

from __future__ import annotations

import math
import socket
import string
import tomllib
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["ConfigError", "Config", "Key", "SCHEMA", "SECTIONS", "NodeConfig", "AgentConfig", "MqttConfig",
           "CollectorConfig", "InfluxdbConfig", "CarbonConfig", "AttributionConfig", "NodePowerConfig", "FacilityConfig", "key", "load_config",
           "config_from_mapping", "render_docs"]


class ConfigError(ValueError):
    """A configuration problem, tied to the key (``section.name``) that caused it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, an optional check and its documentation."""

    type: type | tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None


def key(default: Any, doc: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """A configuration key of a section dataclass: its default, documentation and optional check."""
    return field(default=default, metadata={"doc": doc, "check": check})


def _gzip_level(value: Any) -> str | None:
    return None if 0 <= value <= 9 else "must be 0 (no compression) to 9"


def _positive(value: Any) -> str | None:
    return None if value > 0 and math.isfinite(value) else "must be a positive number"


def _influx_duration(value: Any) -> str | None:
    import re

    if not isinstance(value, str) or not re.fullmatch(r"INF|(\d+(ns|u|ms|s|m|h|d|w))+", value):
        return "must be an InfluxQL duration such as '90d', '52w' or 'INF'"
    return None


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 and math.isfinite(value) else "must be zero or a positive number"


def _slurm_gpu_map(value: Any) -> str | None:
    from greenwatch.agent.slurm.gpus import parse_gpu_map

    try:
        parse_gpu_map(value)
    except ValueError as exc:
        return str(exc)
    return None


def _port(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port between 1 and 65535"


def _listen_address(value: Any) -> str | None:
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return "must be empty (off) or host:port, e.g. '127.0.0.1:9464'"
    return None


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(repr(c) for c in choices)}"

    return check


def _pue(value: Any) -> str | None:
    return None if 1.0 <= value <= 5.0 else "must be between 1.0 and 5.0 (PUE is facility energy / IT energy)"


def _qos(value: Any) -> str | None:
    # The agent deletes a spooled batch once its publish is acknowledged; QoS 0 has no
    # acknowledgement, so every batch would be deleted unconfirmed and lost on any hiccup.
    if value == 0:
        return ("must be 1 or 2: with QoS 0 the broker never confirms a batch, so the agent would delete "
                "spooled batches that may never have arrived")
    return None if value in (1, 2) else "must be 1 or 2"


def _topic_part(value: Any) -> str | None:
    bad = [c for c in "/+#" if c in value]
    if not value:
        return "must not be empty"
    return f"must not contain {''.join(bad)!r} (it becomes one MQTT topic level)" if bad else None


def _topic_prefix(value: Any) -> str | None:
    if not value or value.endswith("/") or "+" in value or "#" in value:
        return "must be a topic such as 'greenwatch/v1' without wildcards or trailing '/'"
    return None


#: Placeholders of ``agent.epilog_report_dir``, filled in by the Slurm epilog.
REPORT_DIR_FIELDS = ("workdir", "job_id", "user")


def _report_dir_template(value: Any) -> str | None:
    """A path template with only the placeholders of :data:`REPORT_DIR_FIELDS`."""
    if not value.strip():
        return "must not be empty"
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"is not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
    known = ", ".join("{" + f + "}" for f in REPORT_DIR_FIELDS)
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in REPORT_DIR_FIELDS:
            return f"unknown placeholder {{{field_name}}}; the placeholders are {known}"
        if spec or conversion:
            return f"placeholder {{{field_name}}} takes no format spec or conversion"
    if not (value.startswith("/") or value.startswith("{workdir}")):
        return "must be an absolute path or start with {workdir}"
    return None


_HOST = socket.gethostname().split(".")[0] or "node"

@dataclass(frozen=True)
class NodeConfig:
    """The ``[node]`` section."""

    cluster: str = key("default", "Cluster name; the second level of every MQTT topic and a tag on every series.", _topic_part)
    name: str = key(_HOST, "This node's name in topics and series (default: the short host name).", _topic_part)


@dataclass(frozen=True)
class AgentConfig:
    """The ``[agent]`` section."""

    sample_hz: float = key(10.0, "GPU sampling rate: energy counter, power, utilisation, memory, temperature, clock.", _positive)
    process_hz: float = key(1.0, "Rate of the slower loop that lists GPU processes, their SM utilisation and their jobs.", _positive)
    publish_interval_s: float = key(5.0, "Seconds of samples per published batch; also the resolution of the per-GPU series in InfluxDB.", _positive)
    mapping_dir: str = key("", "Directory where the Slurm prolog records which job holds which GPU (one file per GPU UUID). Empty: not used.")
    use_environ: bool = key(True, "Fall back to SLURM_JOB_ID / GREENWATCH_JOB in /proc/<pid>/environ when a process is in no scheduler cgroup (needs root or CAP_SYS_PTRACE).")
    proc_root: str = key("/proc", "Where the host's /proc is mounted (inside a container: the host's /proc bind-mounted).")
    host_metrics: bool = key(True, "Sample host CPU, memory and CPU energy (RAPL where readable, else an estimate), and each job's CPU time.")
    event_spool_dir: str = key("/var/spool/greenwatch/events", "Where `greenwatch slurm prolog|epilog` queue job events that could not be published in time; the next hook run sends them, oldest first.")
    event_spool_max: int = key(10000, "At most this many queued job events are kept; beyond it the oldest are dropped (and logged).", _positive)
    hook_deadline_s: float = key(0.9, "`greenwatch slurm prolog|epilog` exit (status 0) at the latest this many seconds after they started, whatever the broker does; undelivered events stay queued.", _positive)
    slurm_gpu_map: str = key("", "Slurm GPU ids that are not a whole board's minor number, for `greenwatch slurm prolog|epilog`: comma-separated 'ID=gpu<minor>/gi<G>/ci<C>' (the MIG device with GPU instance G and compute instance C on the board /dev/nvidia<minor>) or 'ID=<GPU-/MIG- UUID>'. Needed where gres.conf offers MIG devices (MultipleFiles), which Slurm numbers by their place in gres.conf (docs/slurm.md). Empty: every id is a minor number.", _slurm_gpu_map)
    hook_publish_timeout_s: float = key(0.3, "Longest time `greenwatch slurm prolog|epilog` wait for the MQTT broker (connect and acknowledgements) before leaving their events queued.", _positive)
    epilog_report: bool = key(False, "`greenwatch slurm epilog` starts, on the job's first node only, a background `greenwatch report` that writes the job's report (md, html, json, csv, plots) as the job's user into epilog_report_dir (docs/slurm.md). Needs [influxdb] with read access on the node; the epilog itself still returns at once.")
    epilog_report_dir: str = key("{workdir}/greenwatch-{job_id}", "Where the epilog's report goes: an absolute path or one starting with {workdir}; placeholders {workdir} (the job's working directory, SLURM_JOB_WORK_DIR), {job_id} and {user}. Created by the job's user, never by root.", _report_dir_template)
    epilog_report_wait_s: float = key(600.0, "How long the background report waits for the collector's `job` summary (written collector.finalize_delay_s after the job ended) before it reports from the per-batch records it finds, and says so.", _non_negative)
    kubelet_url: str = key("", "Kubelet API used to name Kubernetes pods (namespace, pod name), e.g. 'https://127.0.0.1:10250' or the read-only 'http://127.0.0.1:10255'. Empty: off; pods are then known by UID only.")
    kubelet_token_file: str = key("", "Bearer token for the kubelet (a service account token, e.g. /var/run/secrets/kubernetes.io/serviceaccount/token); empty for none.")
    kubelet_ca_file: str = key("", "CA bundle that signed the kubelet's serving certificate; empty uses the system store.")
    kubelet_insecure_tls: bool = key(False, "Skip verifying the kubelet's certificate (kubelets often serve self-signed certificates); the token is still sent only to kubelet_url.")
    kubelet_refresh_s: float = key(30.0, "How long the kubelet's pod list is cached; an unknown pod UID triggers an early refresh at most every 5 s.", _positive)
    cpu_watts_per_core: float = key(6.0, "CPU watts per busy core for the host-energy estimate used where RAPL is not readable.", _positive)
    spool_dir: str = key("/var/lib/greenwatch-agent/spool", "Every batch is written here before it is published and deleted once a collector's receipt says it is stored (see receipts), so batches survive broker outages and agent restarts (systemd: StateDirectory=greenwatch-agent).")
    spool_max_bytes: int = key(1 << 30, "Disk the spool may take; when full, the oldest batches are dropped (counted and logged). 1 GiB holds over 24 h of batches of a 16-GPU node at the default rates.", _positive)
    state_file: str = key("/var/lib/greenwatch-agent/state.json", "Where the agent records, at every batch, what a restarted agent needs to continue its run (anchor rows, holders, sequence number).")
    resume_max_age_s: float = key(600.0, "A restarted agent continues the previous run (its first batch anchored, the energy while it was down counted from the counter) if the state file is at most this old; otherwise it begins a new run.", _non_negative)
    receipts: bool = key(True, "Keep a published batch in the spool until a collector's receipt says it is stored (in InfluxDB or its fsynced spill) or rejected for good, so batches the broker drops (full queues, hostile subscribers, a discarded session) are published again. false: delete a batch once the broker accepted it, for collectors too old to send receipts (an agent that gets no receipts keeps at most spool_max_bytes and logs an error).")
    receipt_timeout_s: float = key(60.0, "Published batches without a receipt after this long are published again (duplicates cost the collector nothing); while no receipt arrives at all the wait doubles, up to 16 times this.", _positive)
    metrics_listen: str = key("", "host:port where the agent serves Prometheus metrics (/metrics: per-GPU energy, power, utilisation, its jobs, spool, publishing) and readiness (/readyz, /healthz), e.g. '127.0.0.1:9465'. Empty: off. See docs/operations.md.", _listen_address)


@dataclass(frozen=True)
class MqttConfig:
    """The ``[mqtt]`` section."""

    host: str = key("localhost", "MQTT broker host name or address.")
    port: int = key(1883, "MQTT broker port (8883 is customary for TLS).", _port)
    topic_prefix: str = key("greenwatch/v1", "First topic levels; topics are <prefix>/<cluster>/<node>/batch.", _topic_prefix)
    qos: int = key(1, "MQTT quality of service for batches: 1 (at least once, what the collector's idempotent writes expect) or 2. QoS 0 is refused: the agent deletes a spooled batch only once the broker confirms it, and QoS 0 confirms nothing.", _qos)
    keepalive_s: int = key(30, "MQTT keep-alive interval in seconds.", _positive)
    client_id: str = key("", "MQTT client id; empty derives one from the service and node name.")
    username: str = key("", "MQTT user name; empty for none.")
    password_file: str = key("", "File holding the MQTT password (e.g. from systemd LoadCredential=); never put the password itself in the config.")
    tls: bool = key(False, "Connect with TLS.")
    ca_file: str = key("", "CA bundle for TLS; empty uses the system store.")
    cert_file: str = key("", "Client certificate for TLS client authentication.")
    key_file: str = key("", "Private key for cert_file.")


@dataclass(frozen=True)
class CollectorConfig:
    """The ``[collector]`` section."""

    share_group: str = key("greenwatch", "MQTT 5 shared-subscription group: collectors in the same group split the node batches among them.", _topic_part)
    instance: str = key(_HOST, "This collector's name in its health series.")
    max_message_bytes: int = key(8 * 1024 * 1024, "Larger MQTT messages are rejected unread.", _positive)
    max_clock_skew_s: float = key(3600.0, "How far a batch's send time (`sent_us`, the agent's clock) may lie in the future of the collector's clock; further is rejected (`clock-skew`, logged with the node and the skew). Past send times are not limited: batches spooled during an outage of any length are accepted. Its samples are judged against the send time (max_window_s).", _positive)
    max_window_s: float = key(86400.0, "A batch's samples and window ends must lie at most this long before its send time (and at most 2 s after it); keep it above agent.resume_max_age_s plus two publishing intervals (a resumed run's first batch starts at the last sample before the restart).", _positive)
    max_gpus_per_node: int = key(256, "GPUs (MIG instances count each) one batch may name; more is rejected (`too-many-gpus`).", _positive)
    max_jobs_per_batch: int = key(1024, "Jobs one batch may name; more is rejected (`too-many-jobs`).", _positive)
    max_series_per_node: int = key(20000, "Distinct GPUs and jobs (job id and user) one node may name within an hour; a batch that would pass it is rejected (`too-many-series`), so one node cannot flood the database with series.", _positive)
    max_node_messages_per_s: float = key(20.0, "Messages one node may send per second on average (agents send one per publish_interval_s); bursts of up to 100,000 pass (more batches than a full default agent spool holds), so a spool drains at once after an outage. More is rejected (`rate-limit`).", _positive)
    max_new_nodes_per_minute: int = key(2000, "Node names not seen lately that may appear within one minute; more are rejected (`too-many-nodes`). Raise it above the node count for sites of more than 2,000 nodes, whose nodes all appear at once when a collector starts.", _positive)
    health_interval_s: float = key(10.0, "How often the collector writes its own counters to InfluxDB.", _positive)
    session_expiry_s: int = key(86400, "MQTT 5 session expiry: for this long after the collector disconnects the broker keeps its session and queues its share of the batches (size the broker's max_queued_messages/max_queued_bytes for it).", _positive)
    max_unacked: int = key(1000, "MQTT 5 Receive Maximum: messages received but not yet acknowledged, i.e. not yet durably written. Bounds the collector's memory when neither InfluxDB nor the spill can take data.", _positive)
    spill_dir: str = key("/var/lib/greenwatch-collector/spill", "Where records go (fsynced, then the MQTT messages are acknowledged) while InfluxDB cannot take them; drained into InfluxDB, oldest first, when it answers again.")
    spill_max_bytes: int = key(16 << 30, "Disk the spill may take (compressed line protocol). When full, messages are left unacknowledged and the broker holds them.", _positive)
    dead_letter_file: str = key("", "JSON-lines file for lines InfluxDB refuses (cannot parse, field type conflict): each with the time, InfluxDB's reason and the line, fsynced before the messages are acknowledged; the rest of the write is stored. Empty: `dead-letter.jsonl` beside `spill_dir` (/var/lib/greenwatch-collector/dead-letter.jsonl by default). See docs/influxdb.md.")
    dead_letter_max_bytes: int = key(256 << 20, "Size the dead-letter file may reach; further refused lines are only counted (health field `dead_letter_dropped`) and logged until it is moved away or truncated. 0 keeps none.", _non_negative)
    finalize_delay_s: float = key(30.0, "Grace period after a job's end event before its summary (`job` record) is computed, so that the last batches of every node have arrived.", _non_negative)
    metrics_listen: str = key("", "host:port where the collector serves Prometheus metrics (/metrics: messages, rejections by reason, spill, unacknowledged messages, write errors, receipts) and readiness (/readyz, /healthz), e.g. '127.0.0.1:9464'. Empty: off. See docs/operations.md.", _listen_address)


@dataclass(frozen=True)
class InfluxdbConfig:
    """The ``[influxdb]`` section."""

    url: str = key("http://localhost:8086", "InfluxDB base URL (2.x/3.x, or 1.8+ which also answers the v2 write API).")
    org: str = key("greenwatch", "InfluxDB organisation (ignored by 1.8+).")
    bucket: str = key("greenwatch", "Bucket (2.x/3.x) or database/retention policy (1.8+: 'db/rp' or 'db').")
    token_file: str = key("", "File holding the API token (1.8+: 'user:password'); empty for none.")
    write_api: str = key("v2", "Where writes go: v2 (`/api/v2/write`: 2.x, 3.x and 1.8+) or v1 (1.x's `/write?db=&rp=`, for 1.x before 1.8, e.g. Debian's influxdb 1.6; token_file then holds 'user:password', sent as HTTP basic authentication). See docs/influxdb.md.", _one_of("v2", "v1"))
    timeout_s: float = key(10.0, "HTTP timeout for one write.", _positive)
    gzip_level: int = key(1, "gzip level of write bodies, 1 (fastest) to 9 (smallest); 0 sends them uncompressed. Level 1 shrinks line protocol about 5.7x at an eighth of level 9's CPU (7.6x); 0 suits an InfluxDB on the same host.", _gzip_level)
    raw_retention: str = key("90d", "How long `greenwatch influxdb setup` keeps the raw 5 s points (InfluxQL duration, e.g. 90d, 52w, INF).", _influx_duration)
    rollup_1m_retention: str = key("400d", "How long `greenwatch influxdb setup` keeps the 1-minute rollups.", _influx_duration)
    rollup_1h_retention: str = key("INF", "How long `greenwatch influxdb setup` keeps the 1-hour rollups (INF: for ever).", _influx_duration)
    rollup_late_s: int = key(3600, "Points up to this many seconds late (a spooled batch, a drained spill) still reach the rollups by themselves; each rollup run re-reads this much raw data. Later data: re-run setup with --backfill-hours. See docs/influxdb.md.", _positive)
    rollup_every_s: int = key(300, "How often the rollup continuous queries run (s).", _positive)
    summary_copy_every_s: int = key(3600, "How often the continuous query that copies the job summaries into rollup_1h, where they outlive the raw points, runs (s); each run re-reads the summaries of the last day, rollup_late_s and this interval. See docs/influxdb.md.", _positive)


@dataclass(frozen=True)
class CarbonConfig:
    """The ``[carbon]`` section."""

    zone: str = key("DE", "Grid zone (country code) for the shipped annual intensity table, and the fallback outside a series.")
    intensity_csv: str = key("", "Operator-provided CSV (timestamp,g_per_kwh), hourly or finer; empty uses the annual table.")
    live_url: str = key("", "Optional live intensity API URL template; values are cached so the collector keeps working offline.")
    cache_dir: str = key("", "Where the live provider caches values; empty disables the cache.")
    market_factor_g_per_kwh: float = key(-1.0, "Contractual (market-based) emission factor in gCO2e/kWh; negative: none, market-based equals location-based.")
    pue: float = key(1.56, "Constant power usage effectiveness (facility / IT energy). Default: Uptime Institute 2024 global average; set your site's.", _pue)
    facility_csv: str = key("", "Optional facility series CSV (timestamp,pue or timestamp,facility_w,it_w) giving PUE per interval; overrides pue.")


@dataclass(frozen=True)
class AttributionConfig:
    """The ``[attribution]`` section."""

    idle_policy: str = key("equal", "How the idle part of a shared GPU's energy is split: 'equal' among the jobs holding it, 'proportional' to SM share, or 'unallocated' (kept at node level, as Kepler does).", _one_of("equal", "proportional", "unallocated"))
    idle_power_w: float = key(60.0, "A GPU's idle baseline in watts; energy above it is 'active' and split by SM share on shared GPUs.", _non_negative)


def _meter_source(value: Any) -> str | None:
    # Checked again when a report reads it: the file must exist and hold a valid series.
    if value == "" or value.endswith(".csv"):
        return None
    kind, _, rest = value.partition(":")
    measurement, dot, fld = rest.partition(".")
    if kind == "influxdb" and measurement and dot and fld:
        return None
    return "must be empty, a CSV file path ending in .csv, or influxdb:MEASUREMENT.FIELD"


def _iso_date_or_empty(value: Any) -> str | None:
    import datetime

    if value == "":
        return None
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return "must be empty or a date YYYY-MM-DD"
    return None


@dataclass(frozen=True)
class FacilityConfig:
    """The ``[facility]`` section: the site's meters and facts for `greenwatch statement` and `site-report`."""

    name: str = key("", "The data centre's name in the site report.")
    start_of_operation: str = key("", "Date (YYYY-MM-DD) the data centre started operation: selects the EnEfG §11 PUE and energy-reuse limits that apply. Empty: the limits are listed but not judged.", _iso_date_or_empty)
    installed_it_power_kw: float = key(0.0, "Installed IT power demand in kW (EU reporting applies from 500 kW); 0: not stated.", _non_negative)
    customer_unit: str = key("account", "Who a customer statement is for: 'account' (the scheduler account of each job's summary) or 'user'.", _one_of("account", "user"))
    total_energy: str = key("", "Meter of the total data-centre energy (E_DC): a CSV file (timestamp,kwh: the energy of the interval starting at each row) or influxdb:MEASUREMENT.FIELD (kWh per point). Empty: not metered.", _meter_source)
    it_energy: str = key("", "Meter of the IT equipment energy at the UPS/PDU outputs (E_IT), same forms as total_energy.", _meter_source)
    renewable_energy: str = key("", "Renewable energy consumed (E_RES, EN 50600-4-3: owned or contracted with retired certificates), same forms as total_energy.", _meter_source)
    reused_heat: str = key("", "Waste heat delivered for reuse outside the data centre (E_REUSE, EN 50600-4-6), same forms as total_energy.", _meter_source)
    water: str = key("", "Total water input (W_IN) in m3: a CSV file (timestamp,m3) or influxdb:MEASUREMENT.FIELD (m3 per point). Empty: not metered.", _meter_source)


def _source_list(value: Any) -> str | None:
    names = [n.strip() for n in value.split(",") if n.strip()]
    known = ("pm_counters", "redfish", "ipmi-dcmi", "ipmi-sdr")
    bad = [n for n in names if n not in known]
    if bad:
        return f"unknown source {bad[0]!r}; the sources are {', '.join(known)} (comma-separated, preferred first)"
    return None


@dataclass(frozen=True)
class NodePowerConfig:
    """The ``[node_power]`` section: the whole node's meter (docs/methodology.md, "The rest of the node")."""

    sources: str = key("", "Node meters the agent reads, comma-separated, preferred first: 'pm_counters' (HPE Cray EX), 'redfish', 'ipmi-dcmi', 'ipmi-sdr'. The first that answers is used and named on every record; the one in use is kept while it answers, a preferred one taking over after three good polls in a row. Empty: off; the rest of the node is then not included.", _source_list)
    poll_interval_s: float = key(2.0, "How often the node meter is read, in a thread of its own (BMCs refresh every few seconds and answer in hundreds of ms).", _positive)
    timeout_s: float = key(3.0, "Longest wait for one BMC request.", _positive)
    rest_policy: str = key("allocated", "How the rest of the node (meter minus GPUs and CPU) is split: 'allocated' by each job's share of the node's GPUs, 'energy' by each job's measured GPU + CPU energy, or 'unallocated' (kept at node level).", _one_of("allocated", "energy", "unallocated"))
    pm_counters_dir: str = key("/sys/cray/pm_counters", "Where HPE Cray EX pm_counters are.")
    redfish_url: str = key("", "The BMC's Redfish service, e.g. 'https://10.0.0.5' (out of band) or the host interface's address.")
    redfish_username: str = key("", "Redfish user (a read-only account is enough); empty for none.")
    redfish_password_file: str = key("", "File holding the Redfish password (e.g. from systemd LoadCredential=).")
    redfish_ca_file: str = key("", "CA bundle that signed the BMC's certificate; empty uses the CA bundle of requests (certifi).")
    redfish_insecure_tls: bool = key(False, "Do not verify the BMC's certificate (many BMCs ship self-signed ones); prefer redfish_ca_file.")
    redfish_chassis: str = key("", "Chassis id to read; empty: the first member of /redfish/v1/Chassis.")
    ipmi_interface: str = key("open", "ipmitool interface: 'open' (in band, /dev/ipmi0) or 'lanplus' (over the network, ipmi_host).", _one_of("open", "lanplus", "lan"))
    ipmi_host: str = key("", "BMC address for the lanplus interface.")
    ipmi_port: int = key(623, "BMC port for the lanplus interface.", _port)
    ipmi_cipher_suite: int = key(17, "RMCP+ cipher suite for lanplus (ipmitool -C): 17 (HMAC-SHA256, current BMCs) or 3 (HMAC-SHA1, older BMCs).", _non_negative)
    ipmi_username: str = key("", "IPMI user for the lanplus interface.")
    ipmi_password_file: str = key("", "File holding the IPMI password (passed to ipmitool -f, never on its command line).")
    ipmi_sensors: str = key("", "For ipmi-sdr: the SDR power sensors (Watts) whose sum is the node's power, comma-separated, e.g. 'PSU1 Input Power,PSU2 Input Power'.")


@dataclass(frozen=True)
class Config:
    """Validated configuration: one typed section per ``[section]`` of the file, plus the file's path."""

    node: NodeConfig = field(default_factory=NodeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    influxdb: InfluxdbConfig = field(default_factory=InfluxdbConfig)
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    facility: FacilityConfig = field(default_factory=FacilityConfig)
    node_power: NodePowerConfig = field(default_factory=NodePowerConfig)
    path: Path | None = None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """A deep copy of every value, defaults included."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


#: section name -> its dataclass, in the order of the generated docs.
SECTIONS: dict[str, type] = {"node": NodeConfig, "agent": AgentConfig, "mqtt": MqttConfig, "collector": CollectorConfig, "influxdb": InfluxdbConfig, "carbon": CarbonConfig, "attribution": AttributionConfig, "facility": FacilityConfig, "node_power": NodePowerConfig}


def _declarations(cls: type) -> dict[str, Key]:
    hints = typing.get_type_hints(cls)
    return {f.name: Key(hints[f.name], f.default, f.metadata["doc"], f.metadata["check"])
            for f in dataclasses.fields(cls)}


#: section -> key -> declaration, derived from the section dataclasses.
SCHEMA: dict[str, dict[str, Key]] = {section: _declarations(cls) for section, cls in SECTIONS.items()}


def _coerce(key: str, decl: Key, value: Any) -> Any:
    # TOML gives ints where users mean floats (sample_hz = 10); accept that, but never bools as numbers.
    if decl.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if decl.type is int and isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if not isinstance(value, decl.type):
        want = decl.type.__name__ if isinstance(decl.type, type) else "/".join(t.__name__ for t in decl.type)
        names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}
        raise ConfigError(key, f"expected {names.get(want, want)}, got {value!r}")
    if decl.check is not None:
        problem = decl.check(value)
        if problem:
            raise ConfigError(key, f"{problem} (got {value!r})")
    return value


def config_from_mapping(data: Mapping[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document against :data:`SCHEMA`; unknown keys are errors."""
    values: dict[str, dict[str, Any]] = {s: {k: d.default for k, d in keys.items()} for s, keys in SCHEMA.items()}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(section, f"unknown section; known sections: {', '.join(SCHEMA)}")
        if not isinstance(body, Mapping):
            raise ConfigError(section, "expected a [section] table")
        for name, value in body.items():
            key = f"{section}.{name}"
            decl = SCHEMA[section].get(name)
            if decl is None:
                raise ConfigError(key, f"unknown key; keys of [{section}]: {', '.join(SCHEMA[section])}")
            values[section][name] = _coerce(key, decl, value)
    return Config(**{s: SECTIONS[s](**v) for s, v in values.items()}, path=path)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the defaults."""
    if path is None:
        return config_from_mapping({})
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"config file {p} does not exist (see docs/configuration.md for an example)") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{p} is not valid TOML: {exc}") from None
    return config_from_mapping(data, p)


def render_docs() -> str:
    """The key reference of ``docs/configuration.md``, generated from :data:`SCHEMA`."""
    lines: list[str] = []
    for section, keys in SCHEMA.items():
        lines += [f"### `[{section}]`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, decl in keys.items():
            default = decl.default
            if section in ("node", "collector") and name in ("name", "instance"):
                default = "<host name>"
            shown = "true" if default is True else "false" if default is False else repr(default).replace("'", '"')
            tname = decl.type.__name__ if isinstance(decl.type, type) else "/".join(t.__name__ for t in decl.type)
            lines.append(f"| `{name}` | {tname} | `{shown}` | {decl.doc} |")
        lines.append("")
    return "\n".join(lines)
