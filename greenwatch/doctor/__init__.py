"""``greenwatch doctor``: what this node's hardware and setup give greenwatch, checked before the
figures are trusted.

One run checks NVML (versions; per GPU the power and energy fields and scopes that answer, the
energy counter's update period and the power fields' averaging windows measured side by side,
field timestamps, processes and per-process utilisation, MIG), the host's CPU energy sensors as
the agent's service can read them, the Slurm mapping files, and the broker and InfluxDB with the
given config.  :func:`run_doctor` returns a :class:`DoctorReport`; the command prints it as a
table or JSON and exits 1 when something would make the figures wrong.
"""

from greenwatch.doctor.findings import FAIL, INFO, OK, WARN, DoctorReport, Finding
from greenwatch.doctor.run import DoctorOptions, run_doctor

__all__ = ["DoctorOptions", "DoctorReport", "Finding", "run_doctor", "OK", "INFO", "WARN", "FAIL"]
