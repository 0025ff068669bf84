"""The Kubernetes manifests and the image definition in deploy/: what the services need is mounted.

No cluster here: the manifests are parsed as YAML, their embedded configurations go through
greenwatch's own configuration loader and checks, and every path those configurations name is
checked against the volumes the pod mounts (the host's /proc for the cgroup lookup, the GPUs
through the NVIDIA runtime, the config from a ConfigMap, secrets from a Secret with a mode that
greenwatch accepts, state on volumes that outlive the pod) and the probes against the metrics
address.
"""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from greenwatch.config import Config, config_from_mapping
from greenwatch.configcheck import consistency_warnings
from greenwatch.transport.identifiers import check_name

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _docs(name: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all((K8S / name).read_text()) if d}


def _under(path: str, mount: dict) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(mount["mountPath"]))


class Pod:
    """The pod template of a workload, with its one container and the config from its ConfigMap."""

    def __init__(self, docs: dict, kind: str, name: str) -> None:
        self.workload = docs[(kind, name)]
        self.spec = self.workload["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.volumes = {v["name"]: v for v in self.spec["volumes"]}
        for claim in self.workload["spec"].get("volumeClaimTemplates", []):
            self.volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "claim": claim}
        self.mounts = self.container["volumeMounts"]
        args = self.container["args"]
        self.config_path = args[args.index("--config") + 1]
        mount = self.mount_of(self.config_path)
        source = self.volumes[mount["name"]]["configMap"]["name"]
        key = PurePosixPath(self.config_path).relative_to(mount["mountPath"]).as_posix()
        self.config: Config = config_from_mapping(tomllib.loads(docs[("ConfigMap", source)]["data"][key]))

    def mount_of(self, path: str) -> dict:
        """The innermost mount holding ``path``."""
        holding = [m for m in self.mounts if _under(path, m)]
        assert holding, f"{path} is on no volume of {self.container['name']}"
        return max(holding, key=lambda m: len(m["mountPath"]))

    def volume_of(self, path: str) -> dict:
        return self.volumes[self.mount_of(path)["name"]]

    def assert_secret(self, path: str) -> None:
        """``path`` comes from a Secret, readable by its owner only, and the container runs as that owner."""
        secret = self.volume_of(path).get("secret")
        assert secret, f"{path} is not mounted from a Secret"
        # greenwatch refuses secret files that others may read; Secret files are owned by root.
        assert secret["defaultMode"] & 0o077 == 0, f"{path}: mode {secret['defaultMode']:o} is readable by others"
        assert self.container["securityContext"]["runAsUser"] == 0, f"{path}: owned by root, read by someone else"

    def assert_probes_on(self, listen: str) -> None:
        port = int(listen.rpartition(":")[2])
        assert self.container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert self.container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}

    def assert_hardened(self) -> None:
        ctx = self.container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"]
        assert self.container["image"].endswith(f":{VERSION}")


@pytest.fixture(scope="module")
def agent() -> Pod:
    return Pod(_docs("agent.yaml"), "DaemonSet", "greenwatch-agent")


@pytest.fixture(scope="module")
def collector() -> Pod:
    return Pod(_docs("collector.yaml"), "StatefulSet", "greenwatch-collector")


def test_agent_daemonset_mounts_what_the_agent_reads(agent):
    cfg = agent.config
    assert agent.container["args"][0] == "agent"
    assert consistency_warnings(cfg, "agent") == []
    # Processes to pods: the host's PIDs (NVML reports them) and their /proc/<pid>/cgroup.
    assert agent.spec["hostPID"] is True
    host_proc = agent.volume_of(cfg.agent.proc_root + "/1/cgroup")
    assert host_proc["hostPath"]["path"] == "/proc" and agent.mount_of(cfg.agent.proc_root)["readOnly"] is True
    # Every GPU of the node through the NVIDIA runtime, without taking one from the scheduler.
    assert agent.spec["runtimeClassName"] == "nvidia"
    env = {e["name"]: e["value"] for e in agent.container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "utility" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert "nvidia.com/gpu" not in str(agent.container["resources"])
    # Credentials from a Secret; the kubelet token from the service account.
    agent.assert_secret(cfg.mqtt.password_file)
    assert cfg.agent.kubelet_token_file.startswith("/var/run/secrets/kubernetes.io/serviceaccount/")
    # The token goes only to a kubelet whose certificate is verified (against the cluster CA).
    assert not cfg.agent.kubelet_insecure_tls
    assert cfg.agent.kubelet_ca_file == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # Spool and state survive a pod's restart: on the node, not in the container.
    for path in (cfg.agent.spool_dir, cfg.agent.state_file):
        assert "hostPath" in agent.volume_of(path), f"{path} would be lost with the pod"
    agent.assert_probes_on(cfg.agent.metrics_listen)
    agent.assert_hardened()


def test_collector_statefulset_keeps_its_spill_and_session(collector):
    cfg = collector.config
    assert collector.container["args"][0] == "collector"
    assert consistency_warnings(cfg, "collector") == []
    collector.assert_secret(cfg.mqtt.password_file)
    collector.assert_secret(cfg.influxdb.token_file)
    # The spill holds fsynced, already acknowledged records: a volume per pod that outlives it.
    assert "claim" in collector.volume_of(cfg.collector.spill_dir + "/x")
    # collector.instance (the persistent MQTT session) is the host name: stable in a StatefulSet,
    # <name>-0, <name>-1, ..., names the collector accepts.
    spec = collector.workload["spec"]
    assert spec["serviceName"] and spec["replicas"] >= 1
    for ordinal in range(spec["replicas"]):
        assert check_name("instance", f"{collector.workload['metadata']['name']}-{ordinal}") is None
    collector.assert_probes_on(cfg.collector.metrics_listen)
    collector.assert_hardened()
    # The pod may stop long enough to write or spill what it holds (TimeoutStopSec of the unit).
    assert collector.spec["terminationGracePeriodSeconds"] >= 30


def test_containerfile_installs_the_site_extra_where_the_units_expect_it():
    text = (REPO / "deploy" / "Containerfile").read_text()
    assert "[site]" in text and "python -m venv /opt/greenwatch" in text
    assert 'ENTRYPOINT ["/opt/greenwatch/bin/greenwatch"' in text
