"""Run greenwatch's benchmarks and print one JSON object per result line.

    python benchmarks/run.py --quick          # at most ~60 s in all
    python benchmarks/run.py                  # full: larger inputs, more repeats
    python benchmarks/run.py --only attribution

Each benchmark is a module in this directory, listed in :data:`MODULES`, exposing
``run(quick: bool) -> Iterator[dict]``.  Every dict has at least ``name``, ``value`` and
``unit``; comparisons add ``baseline`` and ``ratio`` (value / baseline).  The runner adds
nothing to the lines it prints except that a module which fails prints one line with
``"error"`` and the others still run (the exit status is then 1).  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Benchmark modules, in the order they run.  Add yours here (``benchmarks/<name>.py`` with ``run``).
MODULES: list[str] = ["attribution", "agent_overhead", "write_path", "collector_throughput", "read_scale",
                      "dashboard_queries", "soak"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="greenwatch benchmarks (JSON lines on stdout)")
    ap.add_argument("--quick", action="store_true", help="small inputs, few repeats: at most ~60 s in all")
    ap.add_argument("--only", action="append", default=[], metavar="MODULE", help="run only these modules")
    args = ap.parse_args(argv)
    unknown = set(args.only) - set(MODULES)
    if unknown:
        ap.error(f"unknown benchmark module(s) {sorted(unknown)}; known: {MODULES}")
    failed = False
    names = [n for n in MODULES if not args.only or n in args.only]
    kwargs: dict[str, dict] = {}
    if args.quick and {"agent_overhead", "attribution"} <= set(names):
        # The agent benchmark leaves both cores nearly idle (agent and bare loop use ~1 % of a
        # core each, and only their own CPU time is measured), and attribution's start-up
        # measurement (two fresh interpreters, one after the other, one core) needs just that:
        # --quick runs them together.  The full run keeps every module alone.
        names.remove("agent_overhead")
        names.insert(names.index("attribution"), "agent_overhead")
        try:
            startup = importlib.import_module("benchmarks.attribution").start_startup_measurement()
            kwargs["attribution"] = {"startup": startup}
            kwargs["agent_overhead"] = {"concurrent": "attribution start-up (one core, two fresh interpreters)"}
        except Exception:
            traceback.print_exc(file=sys.stderr)  # attribution then measures its start-up itself
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            for line in module.run(args.quick, **kwargs.get(name, {})):
                print(json.dumps(line), flush=True)
        except Exception as exc:  # one broken benchmark must not hide the others
            failed = True
            traceback.print_exc(file=sys.stderr)
            print(json.dumps({"name": f"{name}.error", "value": None, "unit": "", "error": repr(exc)}), flush=True)
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
