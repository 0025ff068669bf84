"""``greenwatch campaign create|add|remove|rules|list|report``: one figure per model."""

from __future__ import annotations

import argparse
import calendar
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["register", "DEFAULT_REGISTRY", "REPORT_FORMATS"]

#: Where the registry lives unless --registry or $GREENWATCH_CAMPAIGNS says otherwise.
DEFAULT_REGISTRY = "/var/lib/greenwatch/campaigns.jsonl"
REPORT_FORMATS = ("md", "html", "json", "csv", "ai-act", "model-card", "all")

_DESCRIPTION = """\
A campaign is the set of jobs that made one model: pre-training chains, restarts, ablations,
fine-tuning and evaluation, by any number of users and accounts. Jobs join a campaign by tag
(`greenwatch run --campaign NAME`, `greenwatch.track(..., campaign=NAME)`), by rules (account,
user, job-name pattern, cluster, time range) or by hand, and leave it by hand. Every change is
appended to the registry file with who made it and when (docs/campaigns.md).

`report` sums the member jobs' summaries: GPU-hours, energy (GPU, host, the rest of the node
where a node meter measured it, facility overhead), location- and market-based and embodied
emissions, SCI per functional unit, by phase and by month, and the share of energy in work that
did not complete; `--format ai-act` writes the section for the EU AI Act technical
documentation (Annex XI, Section 1, point 2(d),(e)) and `--format model-card` the Hugging Face
model card's co2_eq_emissions block and "Environmental Impact" section."""

_EPILOG = """\
examples:
  greenwatch campaign create llm-7b --location "Juelich, Germany" --hardware "NVIDIA H100 SXM5 80GB"
  greenwatch campaign rules llm-7b --add --account proj-llm --name 'llm7b-pt-*' --phase pre-training
  greenwatch campaign add llm-7b 812345 812399 --phase fine-tuning
  greenwatch campaign add llm-7b 812346 --state failed --note "node failure, resumed in 812347"
  greenwatch campaign remove llm-7b 812400
  greenwatch campaign list llm-7b
  greenwatch campaign report llm-7b --config /etc/greenwatch/greenwatch.toml --format all --out llm-7b/
  greenwatch campaign report vit --db greenwatch-demo/jobs.sqlite --format model-card"""


def _time(text: str) -> float:
    """A date or UTC time (2026-01-31, 2026-01-31T12:00:00Z) or unix seconds."""
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date (2026-01-31), a UTC time (2026-01-31T12:00:00Z) or "
                                         f"unix seconds; got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``campaign`` subcommand to the ``greenwatch`` parser."""
    p = subparsers.add_parser("campaign", help="one model's jobs as a campaign: membership, totals, AI Act and "
                                               "model-card documentation", description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, metavar="FILE",
                   help=f"the campaign registry (default: $GREENWATCH_CAMPAIGNS, else {DEFAULT_REGISTRY})")
    sub = p.add_subparsers(dest="campaign_cmd", required=True, metavar="ACTION",
                           help="create, add, remove, rules, list or report (each has --help)")

    c = sub.add_parser("create", help="start a campaign", description="Start a campaign (a name of letters, digits, '.', '_', '-').")
    c.add_argument("name", help="the campaign's name")
    c.add_argument("--description", default="", help="what the campaign trains, for its reports")
    c.add_argument("--location", default="", help="where the jobs ran, as the model card wants it (e.g. 'Juelich, "
                                                  "Germany')")
    c.add_argument("--hardware", default="", help="hardware as the documentation should name it (default: the GPU "
                                                  "models found in the store)")
    c.add_argument("--training-type", default="", choices=["", "pre-training", "fine-tuning"],
                   help="the model card's training_type (default: from the phases of the jobs)")
    c.set_defaults(func=_guarded(_cmd_create))

    for action, helptext in (("add", "add jobs by hand, or set the phase or state of member jobs"),
                             ("remove", "take jobs out, whatever brought them in")):
        a = sub.add_parser(action, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        a.add_argument("name", help="the campaign")
        a.add_argument("jobs", nargs="+", metavar="JOB", help="job id, or CLUSTER/ID")
        a.add_argument("--cluster", default="", help="the cluster of the job ids (default: any cluster)")
        a.add_argument("--note", default="", help="why, for the audit trail")
        if action == "add":
            from greenwatch.campaigns.registry import PHASES, STATES

            a.add_argument("--phase", default="", choices=("",) + PHASES, help="the phase the jobs belong to")
            a.add_argument("--state", default="", choices=("",) + STATES,
                           help="how the job ended, when greenwatch cannot know it (a Slurm job's failure)")
        a.set_defaults(func=_guarded(_cmd_add if action == "add" else _cmd_remove))

    r = sub.add_parser("rules", help="list, add or remove membership rules",
                       description="List the campaign's rules, add one (--add and its criteria, all of which must hold) or remove one (--remove ID).")
    r.add_argument("name", help="the campaign")
    r.add_argument("--add", action="store_true", help="add a rule made of the criteria given (all must hold)")
    r.add_argument("--remove", type=int, metavar="ID", help="remove rule ID")
    r.add_argument("--account", default="", help="jobs of this Slurm account")
    r.add_argument("--user", default="", help="jobs of this user")
    r.add_argument("--name", dest="name_pattern", default="", metavar="PATTERN",
                   help="shell pattern on the job name, e.g. 'llm7b-*'")
    r.add_argument("--rule-cluster", default="", metavar="CLUSTER", help="jobs of this cluster")
    r.add_argument("--since", type=_time, help="jobs that started at or after this time")
    r.add_argument("--until", type=_time, help="jobs that started before this time")
    from greenwatch.campaigns.registry import PHASES

    r.add_argument("--phase", default="", choices=("",) + PHASES, help="phase of the jobs this rule brings in")
    r.set_defaults(func=_guarded(_cmd_rules))

    ls = sub.add_parser("list", help="list campaigns, or one campaign's rules, hand-made entries and audit trail",
                        description="Without NAME: every campaign. With NAME: its rules, the jobs added or removed by hand, and every change with who made it and when.")
    ls.add_argument("name", nargs="?", help="a campaign")
    ls.set_defaults(func=_guarded(_cmd_list))

    rep = sub.add_parser("report", help="the campaign's report or documentation outputs",
                         description="Sum the member jobs' summaries into the campaign's report, or write its AI Act section or model card (docs/campaigns.md).")
    rep.add_argument("name", help="the campaign")
    rep.add_argument("--format", default="md", choices=REPORT_FORMATS,
                     help="md, html, json, csv; ai-act (EU AI Act Annex XI energy section); model-card (Hugging Face "
                          "co2_eq_emissions block and Environmental Impact section); all (every one into --out)")
    rep.add_argument("--out", type=Path, metavar="PATH", help="file to write (a directory for --format all); "
                                                              "omitted: standard output")
    rep.add_argument("--config", "-c", type=Path, metavar="FILE",
                     help="TOML configuration: [influxdb] to read from, [carbon] for the sources named")
    rep.add_argument("--db", type=Path, action="append", default=[], metavar="SQLITE_FILE",
                     help="read these embedded stores (repeatable: one per `greenwatch run`) instead of InfluxDB")
    rep.add_argument("--cluster", metavar="NAME", help="only jobs of this cluster")
    rep.set_defaults(func=_guarded(_cmd_report))
    return p


def _registry(args: argparse.Namespace) -> Any:
    from greenwatch.campaigns.registry import CampaignRegistry

    return CampaignRegistry(args.registry or os.environ.get("GREENWATCH_CAMPAIGNS") or DEFAULT_REGISTRY)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One line on standard error: exit 2 for a request to fix (a bad name, an unknown campaign, a
    rule without criteria, a damaged registry line), exit 1 when the registry, a store or InfluxDB
    cannot be read or an output cannot be written."""
    from greenwatch.campaigns.registry import CampaignError

    def run(args: argparse.Namespace) -> int:
        from greenwatch.cli import EXIT_CONFIG   # here, not at the top: greenwatch.cli imports this module

        try:
            return command(args)
        except CampaignError as exc:
            print(f"greenwatch campaign {args.campaign_cmd}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except (OSError, RuntimeError) as exc:   # RuntimeError: InfluxDB unreachable or refusing
            print(f"greenwatch campaign {args.campaign_cmd}: {exc}", file=sys.stderr)
            return 1

    return run


def _cmd_create(args: argparse.Namespace) -> int:
    _registry(args).create(args.name, description=args.description, location=args.location,
                           hardware=args.hardware, training_type=args.training_type)
    print(f"campaign {args.name} created")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from greenwatch.campaigns.membership import job_refs

    _registry(args).add(args.name, job_refs(args.jobs, args.cluster), phase=args.phase, state=args.state,
                        note=args.note)
    print(f"campaign {args.name}: added {' '.join(args.jobs)}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from greenwatch.campaigns.membership import job_refs

    _registry(args).remove(args.name, job_refs(args.jobs, args.cluster), note=args.note)
    print(f"campaign {args.name}: removed {' '.join(args.jobs)}")
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from greenwatch.campaigns.registry import CampaignError, Rule

    reg = _registry(args)
    if args.add and args.remove is not None:
        raise CampaignError("give --add or --remove, not both")
    if args.add:
        rule = reg.add_rule(args.name, Rule(account=args.account, user=args.user, name_pattern=args.name_pattern,
                                            cluster=args.rule_cluster, since=args.since, until=args.until,
                                            phase=args.phase))
        print(f"campaign {args.name}: rule {rule.id} added: {rule.describe()}")
    elif args.remove is not None:
        reg.remove_rule(args.name, args.remove)
        print(f"campaign {args.name}: rule {args.remove} removed")
    else:
        for rule in reg.campaign(args.name).rules:
            print(f"{rule.id}: {rule.describe()}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if not args.name:
        for name, c in sorted(reg.campaigns().items()):
            print(f"{name}\t{len(c.rules)} rule(s)\t{sum(1 for v in c.manual.values() if v[0])} job(s) by hand"
                  f"\t{c.description}")
        return 0
    c = reg.campaign(args.name)
    print(f"campaign {c.name}" + (f": {c.description}" if c.description else ""))
    print("rules:" if c.rules else "rules: none")
    for rule in c.rules:
        print(f"  {rule.id}: {rule.describe()}")
    print("by hand:" if c.manual else "by hand: none")
    for ref, (added, phase, state) in c.manual.items():
        job = (ref.cluster + "/" if ref.cluster else "") + ref.job
        print(f"  {job}: {'in' if added else 'removed'}" + (f", phase {phase}" if phase else "")
              + (f", {state}" if state else ""))
    print("history:")
    for ch in c.history:
        print("  " + ch.describe())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from greenwatch.campaigns.report import campaign_report, write_outputs
    from greenwatch.config import ConfigError

    if args.format == "all" and args.out is None:
        raise ConfigError("--out", "--format all needs an output directory")
    for db in args.db:
        if not db.is_file():
            raise ConfigError("--db", f"{db} does not exist")
    campaign = _registry(args).campaign(args.name)
    report = campaign_report(campaign, config=args.config, dbs=args.db, cluster=args.cluster)
    for path in write_outputs(report, args.format, args.out):
        print(path)
    return 0
