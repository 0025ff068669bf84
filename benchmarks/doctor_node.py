"""How long ``greenwatch doctor`` takes on an 8-GPU node: the command as an operator runs it,
against the mock NVML (tests/mocknvml), offline.  Not registered in ``run.py``; run it alone::

    .venv/bin/python benchmarks/doctor_node.py [--quick]

The GPUs are measured concurrently, so the wall time should be the measuring time (``--seconds``,
4 by default) plus start-up, whatever the number of GPUs.  Prints one JSON line per figure
(``name``, ``value``, ``unit``), like the registered modules.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mocknvml import GpuSpec, Scenario, Square, build_mock_nvml, mock_env  # noqa: E402


def run(quick: bool) -> Iterator[dict]:
    """Time the doctor command on 8 (and, in full runs, 16) mock GPUs."""
    lib = build_mock_nvml()
    for gpus in (8,) if quick else (8, 16):
        with tempfile.TemporaryDirectory() as tmp:
            sc = Scenario(t0=time.time() - 5, gpus=[GpuSpec(i, power=[Square(-1e6, 1e6, 150.0, 600.0, 1.3, 0.4)])
                                                    for i in range(gpus)])
            env = mock_env(lib, sc.write(Path(tmp) / "node.scn"))
            start = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "greenwatch", "doctor", "--offline", "--json",
                                "--sysfs-powercap", tmp, "--sysfs-hwmon", tmp], env=env, capture_output=True,
                               text=True, timeout=120)
            wall = time.monotonic() - start
            report = json.loads(p.stdout)
            yield {"name": f"doctor.{gpus}_gpus.wall", "value": round(wall, 2), "unit": "s",
                   "measured_s": report["elapsed_s"], "exit": p.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 GPUs only")
    for line in run(ap.parse_args().quick):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
