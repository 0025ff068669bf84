"""Host checks of ``greenwatch doctor``: CPU energy sensors as the agent's service can read them,
and the Slurm mapping files.

The agent's systemd unit (systemd/greenwatch-agent.service) runs it as a dynamic, unprivileged
user whose one supplementary group is ``video``.  Whether that user can read a file follows from
the file's mode, owner and group alone, so doctor judges it that way whoever runs doctor (root
reads everything, which would hide the problem).  Since Linux 5.10 RAPL's ``energy_uj`` is
readable by root only (a side channel, CVE-2020-8694), so on most nodes the agent estimates CPU
energy unless the site makes it readable.
"""

from __future__ import annotations

import glob
import grp
import os
import stat
from pathlib import Path

from greenwatch.agent.grace import find_grace_sensors
from greenwatch.doctor.findings import FAIL, INFO, OK, WARN, Finding

__all__ = ["AGENT_GROUP", "readable_by_agent", "check_cpu_energy", "check_mapping_dir"]

#: The supplementary group of the agent's unit.
AGENT_GROUP = "video"


def _agent_gid() -> int | None:
    try:
        return grp.getgrnam(AGENT_GROUP).gr_gid
    except KeyError:
        return None


def readable_by_agent(path: str | os.PathLike[str]) -> bool:
    """Whether an unprivileged user in group ``video`` only may read ``path`` (mode bits and group)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_mode & stat.S_IROTH:
        return True
    gid = _agent_gid()
    return gid is not None and st.st_gid == gid and bool(st.st_mode & stat.S_IRGRP)


def check_cpu_energy(powercap_root: str = "/sys/class/powercap", hwmon_root: str = "/sys/class/hwmon") -> list[Finding]:
    """RAPL package counters and Grace hwmon sensors: present, and readable by the agent's service."""
    out: list[Finding] = []
    rapl = [Path(d) / "energy_uj" for d in sorted(glob.glob(os.path.join(powercap_root, "intel-rapl:*")))
            if Path(d).name.count(":") == 1 and (Path(d) / "energy_uj").exists()]
    grace, modules = find_grace_sensors(hwmon_root)
    if rapl:
        blocked = [str(p) for p in rapl if not readable_by_agent(p)]
        if blocked:
            out.append(Finding("rapl", "host", WARN, f"{len(rapl)} RAPL package counter(s), {len(blocked)} not readable "
                               "by the agent's service (DynamicUser, group video)",
                               "host CPU energy will be an estimate (labelled as one); to measure it, make energy_uj "
                               "readable by group video, e.g. a udev or systemd-tmpfiles rule 'z "
                               f"{powercap_root}/intel-rapl:*/energy_uj 0440 root video' (mind CVE-2020-8694)",
                               {"unreadable": blocked}))
        else:
            out.append(Finding("rapl", "host", OK, f"{len(rapl)} RAPL package counter(s) readable by the agent"))
    if grace:
        files = [grace[s] for s in sorted(grace)]
        blocked = [str(p) for p in files if not readable_by_agent(p)]
        words = f"{len(grace)} Grace socket sensor(s), {len(modules & set(grace))} inside Grace Hopper modules"
        if blocked:
            out.append(Finding("grace-hwmon", "host", WARN, f"{words}; {len(blocked)} not readable by the agent",
                               "make power1_average readable by group video (udev rule on the acpi power meter)",
                               {"unreadable": blocked}))
        else:
            out.append(Finding("grace-hwmon", "host", OK, f"{words}, readable by the agent"))
    if not rapl and not grace:
        out.append(Finding("cpu-energy", "host", INFO, "no RAPL and no Grace power sensor: host CPU energy will be "
                           "estimated from CPU time (agent.cpu_watts_per_core), and labelled as an estimate"))
    return out


def check_mapping_dir(mapping_dir: str) -> list[Finding]:
    """The Slurm prolog's mapping folder (``agent.mapping_dir``): there, readable, and what it holds."""
    if not mapping_dir:
        return [Finding("slurm-mapping", "host", INFO, "agent.mapping_dir is not set: jobs come from cgroups and "
                        "process environments only (docs/slurm.md)")]
    p = Path(mapping_dir)
    if not p.is_dir():
        return [Finding("slurm-mapping", "host", FAIL, f"agent.mapping_dir {mapping_dir} does not exist",
                        "create it and install the prolog/epilog (greenwatch slurm, docs/slurm.md), or unset "
                        "agent.mapping_dir: GPUs the prolog maps would get no job")]
    if not readable_by_agent(p) or not (p.stat().st_mode & (stat.S_IXOTH | stat.S_IXGRP)):
        return [Finding("slurm-mapping", "host", FAIL, f"{mapping_dir} is not readable by the agent's service",
                        "make the folder world-readable (mode 0755): the files name only job ids")]
    files = [f for f in p.iterdir() if f.is_file()]
    unreadable = [str(f) for f in files if not readable_by_agent(f)]
    if unreadable:
        return [Finding("slurm-mapping", "host", FAIL, f"{len(unreadable)} of {len(files)} mapping file(s) not "
                        "readable by the agent's service", "the prolog must write them with mode 0644",
                        {"unreadable": unreadable[:20]})]
    return [Finding("slurm-mapping", "host", OK, f"{mapping_dir}: {len(files)} mapping file(s), readable")]
