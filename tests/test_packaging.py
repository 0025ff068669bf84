"""The built distribution: a researcher's core install without the site stack, and what an operator gets.

The sdist is built from a copy of the source tree, the wheel from the unpacked sdist (what
``python -m build`` does), and the wheel is installed with pip into a fresh venv.  That venv gets
greenwatch's core dependencies, as the wheel's own metadata declares them and nothing else: the
distributions of that closure are linked from this test's environment into one directory on the
venv's path, so the test needs no network and proves that the declared core dependencies are
enough (``pip check``) and that the site libraries are neither present nor needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from mocknvml import Constant, GpuSpec, Scenario, mock_env
from mocknvml.scenario import ProcSpec, make_uuid
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from service_helpers import agent_config, collector_config, job_energy, spawn_job, wait_until, write_token

from greenwatch.cli import SITE_MODULES as SITE_MODULE_NAMES

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

#: The site services' libraries: pyproject.toml's [site] extra as distributions, and as the modules
#: the CLI tells apart from a bug when one is missing (checked against each other below).
SITE_DISTS = {canonicalize_name(Requirement(r).name)
              for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["site"]}
SITE_MODULES = tuple(sorted(SITE_MODULE_NAMES))

#: What an operator finds under the environment's prefix (pyproject.toml, [tool.setuptools.data-files]).
OPERATOR_FILES = ["share/greenwatch/systemd/greenwatch-agent.service",
                  "share/greenwatch/systemd/greenwatch-collector.service",
                  "share/greenwatch/examples/agent.toml", "share/greenwatch/examples/collector.toml",
                  "share/greenwatch/examples/mosquitto.conf", "share/greenwatch/examples/mosquitto-acl.conf",
                  "share/greenwatch/prometheus/greenwatch-alerts.yml",
                  "share/greenwatch/grafana/dashboards/greenwatch-operator.json",
                  "share/greenwatch/kubernetes/agent.yaml", "share/greenwatch/kubernetes/Containerfile",
                  "share/doc/greenwatch/operations.md", "share/doc/greenwatch/architecture.md"]


def test_the_cli_knows_every_site_library_by_its_module():
    """A site library missing from a core install is reported as such (pip install 'greenwatch[site]')
    only for the modules the CLI lists: each distribution of [site] needs one of its own there."""
    modules_of: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(canonicalize_name(dist), set()).add(module)
    for dist in sorted(SITE_DISTS):
        assert dist in modules_of, f"{dist} ([site]) is not installed in the test environment"
        assert modules_of[dist] & set(SITE_MODULE_NAMES), (
            f"greenwatch.cli.SITE_MODULES names none of {dist}'s modules {sorted(modules_of[dist])}")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kw)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def _source_copy(dest: Path) -> Path:
    """The files git would see (tracked or not ignored), without build/ leftovers of earlier builds."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _build(tmp: Path) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a copy of the tree, the wheel from the unpacked sdist."""
    src, dist = _source_copy(tmp / "src"), tmp / "dist"
    dist.mkdir()
    name = _run([sys.executable, "-c", "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
                 str(dist)], cwd=src).stdout.strip().splitlines()[-1]
    sdist = dist / name
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
          "-q", "-w", str(dist), str(tmp / "unpacked" / sdist.name.removesuffix(".tar.gz"))])
    return sdist, next(dist.glob("greenwatch-*.whl"))


def _closure(requires: list[str], extra: str = "") -> set[str]:
    """Distributions the requirements pull in, recursively, markers evaluated with ``extra`` (none: the core)."""
    seen: set[str] = set()
    todo = list(requires)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        # The extra selects greenwatch's own optional requirements only, not its dependencies' extras.
        todo += [r for r in metadata.distribution(req.name).requires or [] if "extra ==" not in r]
    return seen


def _link_distributions(names: set[str], into: Path) -> None:
    """Every top-level file and folder of each installed distribution, linked into ``into``."""
    into.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for rel in dist.files or []:
            top = Path(rel).parts[0]
            if top == ".." or (into / top).exists():
                continue  # console scripts outside site-packages; shared folders linked once
            (into / top).symlink_to(Path(str(dist.locate_file(top))).resolve())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), built once for this module."""
    return _build(tmp_path_factory.mktemp("build"))


def _venv(where: Path, wheel: Path, extra: str = "") -> tuple[Path, set[str]]:
    """A fresh venv with the wheel and, linked in, the closure of its requirements (with ``extra``)."""
    venv = where / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
          "--disable-pip-version-check", str(wheel)])
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    requires = [line.partition(":")[2].strip() for line in
                metadata.Distribution.at(next(site_packages.glob("greenwatch-*.dist-info")))
                .read_text("METADATA").splitlines() if line.startswith("Requires-Dist:")]
    closure = _closure(requires, extra)
    _link_distributions(closure, where / "deps")
    (site_packages / "deps.pth").write_text(f"{where / 'deps'}\n")
    return venv, closure


def test_the_wheel_installs_without_the_site_stack_and_measures(tmp_path, built, mock_nvml_lib):
    sdist, wheel = built
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for rel in ("systemd/greenwatch-agent.service", "deploy/config/collector.toml",
                "deploy/prometheus/greenwatch-alerts.yml", "docs/operations.md"):
        assert rel in in_sdist, f"the sdist lacks {rel}"

    venv, closure = _venv(tmp_path, wheel)
    py = venv / "bin" / "python"
    assert not closure & SITE_DISTS, f"the core install pulls in site libraries: {sorted(closure & SITE_DISTS)}"

    check = _run([sys.executable, "-m", "pip", "--python", str(py), "check", "--disable-pip-version-check"])
    assert "No broken requirements" in check.stdout
    present = _run([str(py), "-c", "import importlib.util, sys; "
                    "print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])", *SITE_MODULES]).stdout
    assert present.strip() == "[]"
    for rel in OPERATOR_FILES:
        assert (venv / rel).is_file(), f"{rel} is not installed"

    exe = venv / "bin" / "greenwatch"
    assert _run([str(exe), "--version"]).stdout.strip() == f"greenwatch {VERSION}"
    # --help points at the documentation the wheel installed.
    assert f"{venv}/share/doc/greenwatch/" in " ".join(_run([str(exe), "--help"]).stdout.split())

    # One simulated 250 W GPU; the run and the tracked block each measure it for a moment.
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(-60.0, 900.0, 250.0)])])
    sc.write(tmp_path / "gpu.scn")
    env = dict(mock_env(mock_nvml_lib, tmp_path / "gpu.scn"), CUDA_VISIBLE_DEVICES="0")
    env.pop("PYTHONPATH", None)
    work = tmp_path / "work"
    work.mkdir()
    _run([str(exe), "--log-level", "WARNING", "run", "--out", str(work / "run"), "--", "sleep", "0.5"],
         cwd=work, env=env)
    report = json.loads((work / "run" / "report.json").read_text())
    assert report["job"]["gpu_count"] == 1 and report["energy_kwh"]["gpu"] > 0, report["energy_kwh"]
    _run([str(py), "-c", "import sys, time, greenwatch\n"
          "with greenwatch.track('tracked', out=sys.argv[1]):\n    time.sleep(0.5)", str(work / "tracked")],
         cwd=work, env=env)
    assert json.loads((work / "tracked" / "report.json").read_text())["energy_kwh"]["gpu"] > 0

    # A site command from a core install: a clear error naming the extra, no traceback.
    refused = subprocess.run([str(exe), "collector"], capture_output=True, text=True, timeout=60, cwd=work,
                             env=env)
    assert refused.returncode == 3 and "pip install 'greenwatch[site]'" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_site_install_runs_agent_and_collector_from_the_wheel(tmp_path, built, mosquitto, influxdb,
                                                                  mock_nvml_lib):
    """``pip install 'greenwatch[site]'``: the services start from the installed entry point and
    measure, writing to the real influxd 1.6 through its own API."""
    venv, closure = _venv(tmp_path, built[1], extra="site")
    assert SITE_DISTS <= closure
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "check",
          "--disable-pip-version-check"])
    db = f"wheel{time.monotonic_ns()}"
    influxdb.create_database(db)
    job = spawn_job("wheel-job", "alice")
    procs: list[subprocess.Popen] = []
    try:
        scen = Scenario(t0=time.time(), gpus=[GpuSpec(0, uuid=make_uuid("wheel-node", 0),
                                                      power=[Constant(-60.0, 900.0, 300.0)])],
                        processes=[ProcSpec(job.pid, 0, sm_util=70)])
        scen.write(tmp_path / "node.scn")
        mqtt = {"host": mosquitto.host, "port": mosquitto.port}
        ccfg = collector_config(tmp_path / "collector.toml", mqtt=mqtt, influx_url=influxdb.url, bucket=db,
                                token_file=write_token(tmp_path / "token", ""), instance="wheel",
                                share_group="wheel", prefix="wheel/v1")
        ccfg.write_text(ccfg.read_text().replace("[influxdb]\n", '[influxdb]\nwrite_api = "v1"\n'))
        acfg = agent_config(tmp_path / "agent.toml", mqtt=mqtt, cluster="wheel", node="wheel-node", prefix="wheel/v1")
        exe = str(venv / "bin" / "greenwatch")
        logs = {name: tmp_path / f"{name}.log" for name in ("collector", "agent")}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        agent_env = dict(mock_env(mock_nvml_lib, tmp_path / "node.scn", base=env))
        for name, cfg, penv in (("collector", ccfg, env), ("agent", acfg, agent_env)):
            with open(logs[name], "w") as out:
                procs.append(subprocess.Popen([exe, name, "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                              env=penv))

        def stored() -> bool:
            for p, name in zip(procs, logs):
                assert p.poll() is None, f"{name} exited:\n{logs[name].read_text()[-3000:]}"
            return job_energy(influxdb.query, db).get("wheel-job", 0) > 0

        wait_until(stored, 90, "the job's energy, measured by the installed agent, in InfluxDB")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
        job.kill()
    assert codes == [0, 0], {name: path.read_text()[-2000:] for name, path in logs.items()}
