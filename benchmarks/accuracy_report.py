"""Print the accuracy suite's figures (tests/test_accuracy.py) as the table in docs/accuracy.md.

    python benchmarks/accuracy_report.py                 # runs the suite (~35 s), then prints
    python benchmarks/accuracy_report.py --json FILE     # prints the figures of an earlier run

The suite writes its figures where ``GREENWATCH_ACCURACY_JSON`` points; this script sets it
to a temporary file when it runs the suite itself.  The table is printed even when some
tests fail: the figures are what the suite measured, pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DELIVERIES = ("clean", "drop10", "dup5")


def run_suite(out: Path) -> int:
    """Run tests/test_accuracy.py with the figures written to ``out``; returns pytest's exit status."""
    env = dict(os.environ, GREENWATCH_ACCURACY_JSON=str(out))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_accuracy.py"],
                          cwd=ROOT, env=env).returncode


def pct(x: float) -> str:
    return f"{100 * x:+.3f} %"


def table(figures: dict) -> str:
    """Markdown: one row per case with the worst per-job error of each delivery, the limit and a verdict."""
    lines = ["| case | node | what | clean | 10 % dropped | 5 % duplicated | limit | |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for c in figures["cases"]:
        worst = c["worst_error"]
        ok = abs(worst["clean"]) <= c["limit"]
        verdict = "pass" if ok else "**fail**"
        extra = ""
        if "drop_resets_error" in c:
            extra = f"; reset inside a dropped batch: {pct(c['drop_resets_error'])}"
        if "scan_lag_start_s" in c:
            extra = f"; scan lag {c['scan_lag_start_s']:.2f} s at start, {c['scan_lag_end_s']:.2f} s at end"
        lines.append(f"| {c['case']} | {c['node']} | {c['what']}{extra} | {pct(worst['clean'])} | "
                     f"{pct(worst['drop10'])} | {pct(worst['dup5'])} | {100 * c['limit']:.1f} % | {verdict} |")
    nodes = ", ".join(f"{n}: {v['batches']} batches, dropped {v['dropped']}, duplicated {v['duplicated']}"
                      for n, v in figures["nodes"].items())
    return "\n".join(lines) + f"\n\nRun of {figures['run_s']:.0f} s; {nodes}."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="figures written by an earlier run (GREENWATCH_ACCURACY_JSON)")
    args = ap.parse_args(argv)
    status = 0
    if args.json is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "accuracy.json"
            status = run_suite(path)
            if not path.exists():
                print("the accuracy suite wrote no figures (it failed before measuring)", file=sys.stderr)
                return status or 1
            figures = json.loads(path.read_text())
    else:
        figures = json.loads(args.json.read_text())
    print(table(figures))
    return status


if __name__ == "__main__":
    sys.exit(main())
