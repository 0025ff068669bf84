"""A real Slurm "cluster" of one node on localhost: munged, slurmctld and slurmd (Debian's slurm-wlm).

:class:`SlurmCluster` writes its own slurm.conf and gres.conf into a private directory
(free loopback ports, state and spool in that directory, proctrack/linuxproc,
task/none, select/cons_tres), creates four fake GPUs as character devices
(``mknod nvidia<N> c 195 <N>``, offered as ``gpu`` GRES), and points Prolog/Epilog
at ``greenwatch slurm prolog|epilog`` with a config that names the test broker,
a mapping directory and a spool directory.  The hooks run against the mock NVML
whose scenario (:attr:`SlurmCluster.scenario`) gives the four GPUs minor numbers
0-3 in an order that differs from NVML's index order, as on real machines.

The node has a fifth board, NVML index and minor number 4, in MIG mode with three MIG
devices (:data:`MIG_DEVICES`), offered as typed GRES the way gres.conf describes MIG
devices (``MultipleFiles``: the board's device file and the instance's
``nvidia-caps/nvidia-cap<N>``).  Slurm numbers its GPU GRES by their place in gres.conf,
so the four boards are ids 0-3 and the MIG devices 4-6 (:data:`MIG_GRES_IDS`); the hooks'
``agent.slurm_gpu_map`` says which MIG device each of those ids is.  The boards are typed
``h100``, so ``--gres=gpu:h100:N`` asks for whole boards only.

Everything runs as root (slurmd must, to run jobs as other users); if anything
cannot start, :class:`harness.HarnessError` is raised with the daemons' logs: the
Slurm tests fail loudly, they are never skipped.

Fixture: ``slurm_cluster`` (session scope; shared, do not stop it in a test).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fixtures_e2e import write_config
from harness import HarnessError
from harness.daemon import SETUP_HINT, Daemon, find_binary
from harness.ports import free_port
from mocknvml import GpuSpec, MigSpec, Scenario, make_uuid

__all__ = ["SlurmCluster", "EventRecorder", "GPU_MINORS", "MIG_BOARD", "MIG_DEVICES", "MIG_GRES_IDS"]

NODE = "gwnode"
PARTITION = "gpu"
CLUSTER = "gwtest"
#: NVML index -> minor number (/dev/nvidia<minor>): deliberately not the identity.
GPU_MINORS = (2, 0, 3, 1)
#: NVML index (and minor number) of the board in MIG mode.
MIG_BOARD = 4
#: Its MIG devices as (GPU instance, compute slices, GRES type): 6 of its 7 slices, one left free.
MIG_DEVICES = ((1, 3, "3g"), (2, 2, "2g"), (5, 1, "1g"))
#: GPU instance -> Slurm's GPU id of that MIG device (its place among the GPU GRES).
MIG_GRES_IDS = {gi: 4 + k for k, (gi, _, _) in enumerate(MIG_DEVICES)}


class EventRecorder:
    """Every job event the broker carries (a plain subscription, next to a collector's shared one)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"slurm-test-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p=None: self._subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise HarnessError(f"could not subscribe to {topic} on {host}:{port}")

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.events.append(json.loads(message.payload))

    def all(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def of(self, job_id: str, kind: str) -> list[dict]:
        return [e for e in self.all() if e["job_id"] == job_id and e["type"] == kind]

    def wait_count(self, n: int, timeout: float = 5.0) -> list[dict]:
        """Wait until at least ``n`` events arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.all()) < n:
            time.sleep(0.02)
        return self.all()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class _Munged(Daemon):
    name = "munged"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, startup_timeout=20.0)
        self.binary = find_binary("GREENWATCH_MUNGED", "/usr/sbin/munged", "munged", "munge")
        self.socket = workdir / "munge.socket"
        self.key = workdir / "munge.key"

    def _write_config(self) -> None:
        if not self.key.exists():
            self.key.write_bytes(os.urandom(128))
            self.key.chmod(0o600)

    def _command(self) -> list[str]:
        return [self.binary, "--foreground", "--force", f"--socket={self.socket}", f"--key-file={self.key}",
                f"--pid-file={self.workdir / 'munged.pid'}", f"--seed-file={self.workdir / 'munged.seed'}",
                f"--log-file={self.workdir / 'munged-file.log'}", "--num-threads=4"]

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        munge = shutil.which("munge") or "/usr/bin/munge"
        return subprocess.run([munge, "-n", "-S", str(self.socket)], capture_output=True, timeout=5).returncode == 0

    def _pick_ports(self) -> None:
        pass


class _SlurmDaemon(Daemon):
    """slurmctld or slurmd in the foreground (-D), logging to stderr, i.e. to the harness log."""

    def __init__(self, cluster: "SlurmCluster", name: str) -> None:
        self.name = name
        super().__init__(cluster.workdir / name, startup_timeout=30.0)
        self.cluster = cluster
        self.binary = find_binary(f"GREENWATCH_{name.upper()}", f"/usr/sbin/{name}", name, "slurm-wlm")

    def _write_config(self) -> None:
        self.cluster.write_config()

    def _pick_ports(self) -> None:
        self.cluster.pick_ports()

    def _command(self) -> list[str]:
        conf = str(self.cluster.conf)
        if self.name == "slurmctld":
            return [self.binary, "-D", "-i", "-f", conf]
        return [self.binary, "-D", "-N", NODE, "-f", conf]

    def _listen_ports(self) -> list[int]:
        return [self.cluster.ctld_port if self.name == "slurmctld" else self.cluster.slurmd_port]

    def _ready(self) -> bool:
        if self.name == "slurmctld":
            out = self.cluster.run(["scontrol", "ping"], check=False, timeout=5)
            return out.returncode == 0 and "UP" in out.stdout
        out = self.cluster.run(["sinfo", "-h", "-n", NODE, "-o", "%t"], check=False, timeout=5)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")


class SlurmCluster:
    """One node (``gwnode``) with four fake GPUs as GRES and a MIG board, partition ``gpu``, hooks wired to greenwatch."""

    def __init__(self, workdir: Path, *, broker: tuple[str, int], mock_lib_dir: Path) -> None:
        self.workdir = Path(workdir)
        self.node, self.partition, self.cluster_name = NODE, PARTITION, CLUSTER
        self.broker = broker
        self.mock_lib_dir = Path(mock_lib_dir)
        self.conf = self.workdir / "slurm.conf"
        self.dev_dir = self.workdir / "dev"
        self.mapping_dir = self.workdir / "gpu-jobs"
        self.spool_dir = self.workdir / "event-spool"
        self.hook_log = self.workdir / "hooks.log"
        self.hook_config = self.workdir / "greenwatch-hooks.toml"
        self.scenario_path = self.workdir / "node.scn"
        #: A shared world-writable directory for job scripts run as other users (pid files, output).
        self.jobs_dir = self.workdir / "jobs"
        self.scenario = Scenario(
            t0=time.time(), reload_on_change=True,
            gpus=[GpuSpec(i, uuid=make_uuid(NODE, i), minor=m) for i, m in enumerate(GPU_MINORS)]
            + [GpuSpec(MIG_BOARD, uuid=make_uuid(NODE, MIG_BOARD), minor=MIG_BOARD, mig=True)],
            migs=[MigSpec(MIG_BOARD, gi=gi, slices=n) for gi, n, _ in MIG_DEVICES])
        self.ctld_port = self.slurmd_port = 0
        self.pick_ports()
        self.munged = _Munged(self.workdir / "munge")
        self.slurmctld = _SlurmDaemon(self, "slurmctld")
        self.slurmd = _SlurmDaemon(self, "slurmd")

    # -- set-up ------------------------------------------------------------------------

    def pick_ports(self) -> None:
        self.ctld_port, self.slurmd_port = free_port(), free_port()

    def uuid_of_minor(self, minor: int) -> str:
        return self.scenario.gpus[GPU_MINORS.index(minor)].resolved_uuid

    def nvml_index_of_minor(self, minor: int) -> int:
        return GPU_MINORS.index(minor)

    def write_scenario(self) -> None:
        self.scenario.write(self.scenario_path)

    def write_config(self) -> None:
        w = self.workdir
        for d in ("state", "spool", "dev"):
            (w / d).mkdir(exist_ok=True)
        caps = self.dev_dir / "nvidia-caps"
        caps.mkdir(exist_ok=True)
        devices = [(self.dev_dir / f"nvidia{minor}", 195, minor) for minor in range(MIG_BOARD + 1)]
        # nvidia-caps minors are the driver's; only their files matter to Slurm here.
        devices += [(caps / f"nvidia-cap{20 + 9 * gi}", 236, 20 + 9 * gi) for gi, _, _ in MIG_DEVICES]
        for dev, major, minor in devices:
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        host = socket.gethostname().split(".")[0] or "localhost"
        gres = ",".join(["gpu:h100:4"] + [f"gpu:{t}:1" for _, _, t in MIG_DEVICES])
        hook = w / "hook.sh"
        hook.write_text(
            "#!/bin/sh\n"
            "# Slurm runs this as root with SLURM_* set; $1 is prolog or epilog.\n"
            f"export LD_LIBRARY_PATH='{self.mock_lib_dir.resolve()}'\n"
            f"export GREENWATCH_MOCK_NVML_SCENARIO='{self.scenario_path}'\n"
            f"exec '{sys.executable}' -m greenwatch --log-level INFO slurm \"$1\" "
            f"--config '{self.hook_config}' --log-file '{self.hook_log}'\n")
        for kind in ("prolog", "epilog"):
            script = w / f"{kind}.sh"
            script.write_text(f"#!/bin/sh\nexec '{hook}' {kind}\n")
            script.chmod(0o755)
        hook.chmod(0o755)
        write_config(self.hook_config, {
            "node": {"cluster": CLUSTER, "name": NODE},
            # The deadline is generous here: a loaded CI machine must not turn this test into a
            # test of the spool (tests/test_slurm_hooks.py measures the default deadline).
            "agent": {"mapping_dir": str(self.mapping_dir), "event_spool_dir": str(self.spool_dir),
                      "hook_deadline_s": 15.0,
                      "slurm_gpu_map": ", ".join(f"{MIG_GRES_IDS[gi]}=gpu{MIG_BOARD}/gi{gi}/ci0"
                                                 for gi, _, _ in MIG_DEVICES)},
            "mqtt": {"host": self.broker[0], "port": self.broker[1]},
        })
        (w / "gres.conf").write_text(f"Name=gpu Type=h100 File={self.dev_dir}/nvidia[0-3]\n" + "".join(
            f"Name=gpu Type={t} MultipleFiles={self.dev_dir}/nvidia{MIG_BOARD},{caps}/nvidia-cap{20 + 9 * gi}\n"
            for gi, _, t in MIG_DEVICES))
        (w / "plugstack.conf").write_text("")
        self.conf.write_text(f"""\
# generated by tests/fixtures_slurm.py
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munged.socket}
StateSaveLocation={w / 'state'}
SlurmdSpoolDir={w / 'spool'}
SlurmctldPidFile={w / 'slurmctld.pid'}
SlurmdPidFile={w / 'slurmd.pid'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
ReturnToService=2
SlurmdParameters=config_overrides
PrologFlags=Alloc
Prolog={w / 'prolog.sh'}
Epilog={w / 'epilog.sh'}
MailProg=/bin/true
PlugStackConfig={w / 'plugstack.conf'}
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 Gres={gres} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}\n{self.logs()}")
        return out

    def start(self) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise HarnessError("the Slurm tests run slurmd, which must run as root (sudo pytest -m slurm)")
        for tool in ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "munge"):
            if shutil.which(tool) is None:
                raise HarnessError(f"{tool} not found: {SETUP_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o711)  # jobs run as other users need to reach their spool directories
        self.jobs_dir.mkdir(exist_ok=True)
        self.jobs_dir.chmod(0o1777)
        self.write_scenario()
        self.write_config()
        try:
            self.munged.start()
            self.slurmctld.start()
            self.slurmd.start()
        except HarnessError as exc:
            self.stop()
            raise HarnessError(f"Slurm did not start: {exc}\n{self.logs()}") from None
        return self

    # -- jobs --------------------------------------------------------------------------

    def sbatch(self, *args: str, script: str) -> str:
        """Submit a batch script; returns the job id."""
        path = self.jobs_dir / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        path.chmod(0o755)
        out = self.run(["sbatch", "--parsable", f"--chdir={self.jobs_dir}",
                        f"--output={self.jobs_dir}/slurm-%j.out", *args, str(path)])
        return out.stdout.strip().split(";")[0]

    def queued(self) -> dict[str, str]:
        """{job id: state} of every job slurmctld still lists as pending/running/completing."""
        out = self.run(["squeue", "-h", "-o", "%i %T"], check=False)
        return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())

    def wait_gone(self, job_ids: list[str], timeout: float = 60.0) -> None:
        """Wait until the jobs left the queue (their epilogs finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not set(job_ids) & set(self.queued()):
                return
            time.sleep(0.2)
        raise HarnessError(f"jobs {job_ids} still queued after {timeout} s: {self.queued()}\n{self.logs()}")

    def cancel_all(self) -> None:
        ids = list(self.queued())
        if ids:
            self.run(["scancel", *ids], check=False)
            try:
                self.wait_gone(ids, timeout=30)
            except HarnessError:
                pass

    def logs(self, lines: int = 30) -> str:
        parts = []
        for d in (self.munged, self.slurmctld, self.slurmd):
            parts.append(f"--- {d.log_path} ---\n{d.log_tail(lines)}")
        if self.hook_log.exists():
            tail = self.hook_log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {self.hook_log} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.slurmctld.running and self.slurmd.running:
            self.cancel_all()
        for d in (self.slurmd, self.slurmctld, self.munged):
            try:
                d.stop()
            except Exception:
                d.kill()


@pytest.fixture(scope="session")
def slurm_cluster(mosquitto, mock_nvml_lib):
    """A running one-node Slurm cluster whose Prolog/Epilog are greenwatch's (session-scoped)."""
    # Not under pytest's 0700 temp root: jobs run as other users must reach their files.
    workdir = Path(tempfile.mkdtemp(prefix="greenwatch-slurm-"))
    cluster = SlurmCluster(workdir, broker=(mosquitto.host, mosquitto.port), mock_lib_dir=mock_nvml_lib)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
