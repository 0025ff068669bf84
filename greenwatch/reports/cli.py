"""``greenwatch report``: one job's carbon report from InfluxDB or from an embedded store."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["register", "parse_run_as", "wait_for_summary", "stored_carbon_context"]

_DESCRIPTION = """\
Write the carbon report of one job: identity, wall time and GPU-hours, energy (GPU, host, the
rest of the node where a node meter measured it, facility overhead), location- and market-based
emissions with their intensity source, embodied emissions and SCI, idle-allocated waste,
per-GPU power and utilisation, plots, everyday equivalences and the emissions had the job
started at the lowest-carbon time.

The job is read from InfluxDB (the [influxdb] section of --config) or, with --db, from an
embedded SQLite store written by `greenwatch demo` or `greenwatch run`. Grid intensity,
PUE and the market-based factor come from the [carbon] section of --config; without one,
from the settings a `greenwatch run` or track() run stored with itself in --db, else the
built-in defaults. The JSON form is specified in docs/report-format.md.

The Slurm epilog (agent.epilog_report) runs this command in the background with --wait-s
and --run-as to put each job's report into its working directory (docs/slurm.md)."""

_EPILOG = """\
examples:
  greenwatch report --job 123456 --config /etc/greenwatch/greenwatch.toml --format html --out job.html
  greenwatch report --job 1001 --db greenwatch-demo/greenwatch.sqlite
  greenwatch report --job train --db greenwatch-runs/train-20250101T120000Z/greenwatch.sqlite \\
      --format all --out report/ --unit tokens=2e9
  greenwatch report --job 123456 --config /etc/greenwatch/greenwatch.toml --wait-s 600 \\
      --format all --out /home/alice/run1/greenwatch-123456 --run-as 1234:1234     # as root"""

#: Without a summary, the wait ends early once it is clear the job has no records at all
#: (e.g. a job that used no GPU): a GPU job's per-batch records arrive while it runs.
_NO_DATA_GIVE_UP_S = 120.0


def _unit(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name.strip() or not number > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER with NUMBER > 0, e.g. tokens=2e9; got {text!r}")
    return name.strip(), number


def parse_run_as(text: str) -> tuple[int, int]:
    """``"UID:GID"`` (numbers) -> (uid, gid)."""
    uid, sep, gid = text.partition(":")
    if not sep or not uid.strip().isdigit() or not gid.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected UID:GID as numbers, e.g. 1234:1234; got {text!r}")
    return int(uid), int(gid)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0; got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``greenwatch`` parser."""
    p = subparsers.add_parser("report", help="write one job's carbon report (Markdown, HTML, JSON or CSV)",
                              description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, metavar="ID",
                   help="job id: the Slurm job id, the Kubernetes 'k8s:<pod-uid>', or the --name of `greenwatch run`")
    p.add_argument("--format", default="md", choices=["md", "html", "json", "csv", "all"],
                   help="output format (default: md). html is one self-contained file with the plots embedded; "
                        "md writes its PNG plots next to --out; all writes every format into the directory --out")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="file to write (a directory for --format all); omitted: print to standard output "
                        "(md then refers to no plots)")
    p.add_argument("--config", "-c", type=Path, metavar="FILE",
                   help="TOML configuration: [carbon] for intensity, PUE and market factor, [influxdb] for where "
                        "to read when --db is not given (every key: docs/configuration.md); omitted: the [carbon] "
                        "settings stored with a `greenwatch run` or track() run in --db, else defaults")
    p.add_argument("--cluster", metavar="NAME",
                   help="the cluster the job ran on (default: node.cluster of --config when it sets one, else "
                        "the only cluster the job id exists on): the same job id on another cluster is another "
                        "job. With --db, only when given")
    p.add_argument("--db", type=Path, metavar="SQLITE_FILE",
                   help="read this embedded store (greenwatch.sqlite of `greenwatch demo` or `greenwatch run`) "
                        "instead of InfluxDB")
    p.add_argument("--what-if-window-h", type=float, default=24.0, metavar="HOURS",
                   help="search the lowest-carbon start this many hours before and after the actual start "
                        "(default: 24)")
    p.add_argument("--unit", type=_unit, action="append", default=[], metavar="NAME=NUMBER",
                   help="a functional unit of the run for SCI, e.g. tokens=2e9 or samples=1.2e6 (repeatable; adds "
                        "to the units the run recorded with run.mark())")
    p.add_argument("--wait-s", type=_seconds, metavar="SECONDS",
                   help="first wait up to SECONDS for the job's summary (the `job` record the collector writes "
                        "collector.finalize_delay_s after the job ended), polling the store; if it does not come, "
                        "report from the per-batch records there are and say so on stderr and in the report")
    p.add_argument("--run-as", type=parse_run_as, metavar="UID:GID",
                   help="as root: read the config, secrets and store as root, then drop to UID:GID (with the "
                        "user's groups) before waiting and writing, so every file belongs to that user. Without "
                        "root only your own UID:GID is accepted")
    p.set_defaults(func=_cmd_report)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from greenwatch.config import ConfigError, load_config
    from greenwatch.reports import EmbeddedSource, InfluxSource, ReportError, build_report, render, write_all_formats
    from greenwatch.reports import write_report
    from greenwatch.wiring import carbon_context

    if not args.what_if_window_h >= 0:
        raise ConfigError("--what-if-window-h", "must be >= 0")
    if args.format == "all" and args.out is None:
        raise ConfigError("--out", "--format all needs an output directory")
    run_as = args.run_as
    if run_as is not None and os.geteuid() != 0:
        if run_as != (os.geteuid(), os.getegid()):
            raise ConfigError("--run-as", f"only root can write as another user; this process is uid {os.geteuid()} "
                                          f"gid {os.getegid()} (omit --run-as, or give {os.geteuid()}:{os.getegid()})")
        run_as = None  # already that user: nothing to drop
    cfg = load_config(args.config)
    # A store of `greenwatch run` keeps the [carbon] settings its run was priced with: without
    # --config those are the report's, so it names the sources that produced its figures.
    carbon = None if args.db is not None and args.config is None else carbon_context(cfg)
    from greenwatch.carbon import load_embodied

    embodied = load_embodied()
    store = None
    if args.db is not None:
        if not args.db.is_file():
            raise ConfigError("--db", f"{args.db} does not exist")
        from greenwatch.storage.embedded import EmbeddedStore

        store = EmbeddedStore(args.db)
        source = EmbeddedSource(store, cluster=args.cluster)
        if carbon is None:
            carbon = stored_carbon_context(source, args.job)
    else:
        from greenwatch.wiring import influx_store

        store = influx_store(cfg)
        source = InfluxSource(store, cluster=args.cluster or _configured_cluster(cfg))
    private_dir = None
    try:
        summary = None
        if args.wait_s is not None or run_as is not None:
            # One query now, still privileged: it also loads what the store's queries need (the
            # HTTP client, the idna codec of the host name...) while those files are readable.
            summary = _poll_summary(source, args.job)
        if run_as is not None:
            private_dir = _prepare_run_as(run_as, carbon, embodied)
            _drop_privileges(*run_as)
        if args.wait_s is not None and not summary:
            summary = wait_for_summary(source, args.job, args.wait_s, first_done=True)
        try:
            report = build_report(source, args.job, carbon=carbon, embodied=embodied,
                                  what_if_window_s=args.what_if_window_h * 3600, functional_units=dict(args.unit))
        except ReportError as exc:
            print(f"greenwatch report: {exc}", file=sys.stderr)
            return 1
        except RuntimeError as exc:  # InfluxError: unreachable server, bad credentials
            print(f"greenwatch report: {exc}", file=sys.stderr)
            return 1
        if args.wait_s is not None and not summary:
            text = (f"No job summary after waiting {args.wait_s:g} s: this report is built from the per-batch "
                    "records found then and may miss the job's last batches, its exact start and end, and "
                    "its account and partition.")
            print(f"greenwatch report: job {args.job}: {text}", file=sys.stderr)
            report.notes.append(text)
        try:
            if args.format == "all":
                for path in write_all_formats(report, args.out).values():
                    print(path)
            elif args.out is None:
                sys.stdout.write(render(report, args.format))
            else:
                print(write_report(report, args.format, args.out))
        except OSError as exc:
            print(f"greenwatch report: job {args.job}: cannot write the report: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        try:
            store.close()
        except Exception:
            pass
        if private_dir is not None:
            import shutil

            shutil.rmtree(private_dir, ignore_errors=True)


def _configured_cluster(cfg: Any) -> str | None:
    """node.cluster when the configuration names one; None for the built-in default, which a
    configuration written only to read reports (no [node] section) leaves in place."""
    from greenwatch.config import SCHEMA

    cluster = str(cfg.node.cluster)
    return None if cluster == SCHEMA["node"]["cluster"].default else cluster


# -- the carbon settings a run was priced with -------------------------------------------------

def stored_carbon_context(source: Any, job_id: str) -> Any:
    """The carbon context of the ``[carbon]`` settings stored in the job's record (``greenwatch run``
    and ``track`` keep them there); the built-in defaults for a job that stored none."""
    import json

    from greenwatch.config import ConfigError, config_from_mapping
    from greenwatch.wiring import carbon_context

    stored = None
    for point in source.job_points("job", job_id):
        stored = point.get("carbon_config") or stored
    if not stored:
        return carbon_context(config_from_mapping({}))
    try:
        return carbon_context(config_from_mapping({"carbon": json.loads(stored)}))
    except (ValueError, ConfigError) as exc:
        raise ConfigError("--config", f"job {job_id} was priced with the carbon settings {stored}, which cannot "
                                      f"be used now ({exc}); give them with --config") from None


# -- waiting for the job's summary ------------------------------------------------------------

def _poll_summary(source: Any, job_id: str) -> bool | None:
    """True if the ``job`` record exists, False if not, None if the store did not answer."""
    try:
        return bool(source.job_points("job", job_id))
    except RuntimeError as exc:  # InfluxError: the store may come back while we wait
        print(f"greenwatch report: job {job_id}: store not answering ({exc}); will retry", file=sys.stderr)
        return None


def wait_for_summary(source: Any, job_id: str, wait_s: float, *, first_done: bool = False,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                     give_up_without_data_s: float = _NO_DATA_GIVE_UP_S) -> bool:
    """Poll ``source`` until job ``job_id`` has its ``job`` summary record; False if ``wait_s`` ran out.

    Polls after 1 s, then 1.5 times longer each time, at most every 15 s.  When there is
    neither a summary nor a single per-batch record after ``give_up_without_data_s``, the job
    has nothing to report (it used no GPU the agents saw) and waiting longer would not help.
    ``first_done`` says the caller already polled once (at time 0) and found nothing.
    """
    start = clock()
    deadline = start + wait_s
    delay = 1.0
    looked_for_data = False
    if first_done:
        if wait_s <= 0:
            return False
        sleep(max(0.0, min(delay, deadline - clock())))
        delay *= 1.5
    while True:
        if _poll_summary(source, job_id):
            return True
        now = clock()
        if now >= deadline:
            return False
        if not looked_for_data and now - start >= give_up_without_data_s:
            looked_for_data = True
            try:
                has_data = bool(source.job_points("job_energy", job_id))
            except RuntimeError:
                has_data = True  # unknown: keep waiting
            if not has_data:
                print(f"greenwatch report: job {job_id}: no records at all after {now - start:.0f} s "
                      "(a job without GPUs?); not waiting longer", file=sys.stderr)
                return False
        sleep(max(0.0, min(delay, deadline - now)))
        delay = min(delay * 1.5, 15.0)


# -- writing as the job's user -----------------------------------------------------------------

def _prepare_run_as(run_as: tuple[int, int], carbon: Any, embodied: Any) -> str:
    """As root, before dropping privileges: a private HOME/MPLCONFIGDIR for the user, and every module
    the rendering needs loaded (a synthetic report is rendered in memory), because after the drop
    the user may not be allowed to read Python's or greenwatch's files (and must not write root's).
    """
    import tempfile

    uid, gid = run_as
    private_dir = tempfile.mkdtemp(prefix="greenwatch-report-")  # mode 0700, created exclusively
    os.chown(private_dir, uid, gid)
    os.environ["HOME"] = private_dir
    os.environ["MPLCONFIGDIR"] = private_dir
    os.environ.pop("XDG_CONFIG_HOME", None)
    os.environ.pop("XDG_CACHE_HOME", None)
    _warm_up(carbon, embodied)
    import ctypes  # noqa: F401  (for prctl after the drop)
    import ctypes.util  # noqa: F401
    import grp  # noqa: F401
    import pwd  # noqa: F401
    import shutil  # noqa: F401  (removes the private directory at the end)
    return private_dir


def _warm_up(carbon: Any, embodied: Any) -> None:
    """Render a small synthetic report in every format, in memory: this imports matplotlib, its PNG
    writer, fonts, numpy's pieces and the renderers while their files are still readable."""
    from greenwatch.reports import FORMATS, build_report, render

    t_end = int(time.time() // 3600 * 3600 - 3600) * 1_000_000_000
    times = [t_end - 10_000_000_000, t_end - 5_000_000_000, t_end]
    base = {"cluster": "warm-up", "node": "n1", "job": "warm-up"}

    class Synthetic:
        description = "synthetic warm-up data"

        def job_points(self, measurement: str, job_id: str) -> list[dict]:
            if measurement == "job_energy":
                return [dict(base, time_ns=t, user="u", energy_j=500.0, idle_energy_j=50.0, facility_energy_j=600.0,
                             co2_g=0.05, co2_market_g=0.05, gpu_seconds=5.0, host_energy_j=10.0) for t in times]
            if measurement == "job_gpu":
                return [dict(base, time_ns=t, gpu="GPU-warm-up", energy_j=500.0, idle_energy_j=50.0,
                             gpu_seconds=5.0) for t in times]
            return []

        def gpu_points(self, cluster: str, node: str, gpu: str, t0: int, t1: int) -> list[dict]:
            return [dict(base, time_ns=t, gpu=gpu, gpu_index="0", model="warm-up", power_w=100.0, power_max_w=120.0,
                         util_gpu_pct=50.0, util_mem_pct=20.0, samples=50, counter=1) for t in times]

        def node_points(self, cluster: str, node: str, t0: int, t1: int) -> list[dict]:
            return [dict(base, time_ns=t, host_energy_j=20.0, host_energy_measured=1) for t in times]

    try:
        report = build_report(Synthetic(), "warm-up", carbon=carbon, embodied=embodied, what_if_window_s=3600.0)
        report.notes.append("warm-up")
        for fmt in FORMATS:
            render(report, fmt)
    except Exception as exc:  # the real report may still work: say so and go on
        print(f"greenwatch report: warm-up before dropping privileges failed: {exc!r}", file=sys.stderr)


def _drop_privileges(uid: int, gid: int) -> None:
    """setgroups (the user's groups, as Slurm gives the job), setgid, setuid; then make sure it held."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
        groups = os.getgrouplist(name, gid)
    except (KeyError, OSError):
        groups = [gid]  # a uid unknown to this node's user database: its primary group only
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0 and (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid, uid, gid, gid):
        raise SystemExit("greenwatch report: could not drop privileges")  # pragma: no cover
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover
            raise SystemExit("greenwatch report: privileges could be regained; refusing to go on")
        _not_dumpable()


def _not_dumpable() -> None:
    """Keep the user from reading the token out of this process (ptrace, /proc/PID/mem), whatever
    fs.suid_dumpable says (the kernel already does this for the default 0)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass
