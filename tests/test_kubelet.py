"""Pod names from the kubelet: a local HTTP server serves a realistic ``/pods`` (PodList) document."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from greenwatch.agent.jobs import JobResolver
from greenwatch.agent.kubelet import KubeletPods, normalise_uid, parse_pod_list

POD_UID = "2c9f8a79-5391-454b-88cb-86190881cb96"
STATIC_UID = "3f0bfbb7c0e1ac36c2e5b6a9ab5d0c11"  # static (mirror) pods: the config hash
CID = "4f1d3a7c9b2e8d6f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7"


def pod(uid: str, namespace: str, name: str) -> dict:
    """One item as the kubelet returns it (trimmed, but with the real structure)."""
    return {
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid, "resourceVersion": "48213",
            "creationTimestamp": "2025-11-28T09:12:44Z",
            "labels": {"app": name.rsplit("-", 2)[0], "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name.rsplit("-", 1)[0],
                                 "uid": "9e1c0f6a-3b7d-4a52-8f0e-2d6c4b1a9e73", "controller": True}],
        },
        "spec": {
            "nodeName": "gpu0042", "runtimeClassName": "nvidia", "restartPolicy": "Always",
            "containers": [{"name": "trainer", "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                            "resources": {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}}],
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "10.1.4.42", "podIP": "10.244.3.17",
            "containerStatuses": [{"name": "trainer", "ready": True, "restartCount": 0,
                                   "containerID": f"containerd://{CID}"}],
        },
    }


POD_LIST = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
    pod(POD_UID, "climate", "trainer-7d9f8b6c5d-x2kqp"),
    pod(STATIC_UID, "kube-system", "kube-apiserver-gpu0042"),
    {"metadata": {"name": "broken"}},  # no uid/namespace: skipped
]}


class FakeKubelet:
    """``GET /pods`` with an optional bearer token; counts requests; can be switched off."""

    def __init__(self, token: str | None = None) -> None:
        self.token, self.requests, self.up = token, 0, True
        self.doc = POD_LIST
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests += 1
                if not outer.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path != "/pods":
                    self.send_response(404)
                    self.end_headers()
                    return
                if outer.token and self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kubelet():
    k = FakeKubelet(token="sa-token-123")
    yield k
    k.close()


def test_parse_pod_list():
    pods = parse_pod_list(POD_LIST)
    assert len(pods) == 2
    assert pods[normalise_uid(POD_UID)].namespace == "climate"
    assert pods[normalise_uid(POD_UID.replace("-", "_"))].name == "trainer-7d9f8b6c5d-x2kqp"
    assert parse_pod_list({"items": "nope"}) == {} and parse_pod_list([]) == {}


def test_lookup_with_token_and_refresh(kubelet: FakeKubelet, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    pods = KubeletPods(kubelet.url, token_file=str(token), refresh_s=60, min_refresh_s=0.2)
    try:
        deadline = time.monotonic() + 5
        while pods.fetches == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        info = pods.lookup(POD_UID)
        assert info is not None and (info.namespace, info.name) == ("climate", "trainer-7d9f8b6c5d-x2kqp")
        assert pods.lookup(STATIC_UID).namespace == "kube-system"
        # A pod the cache does not know asks for an early refresh, rate-limited to min_refresh_s.
        new_uid = "0d2b4f6a-1c3e-4a5b-8d7f-9e0a1b2c3d4e"
        kubelet.doc = {"items": POD_LIST["items"] + [pod(new_uid, "ml", "notebook-0")]}
        before = kubelet.requests
        for _ in range(50):
            if pods.lookup(new_uid) is not None:
                break
            time.sleep(0.02)
        assert pods.lookup(new_uid).name == "notebook-0"
        assert kubelet.requests - before <= 3
    finally:
        pods.close()


def test_unreachable_kubelet_is_logged_once_and_keeps_the_cache(kubelet: FakeKubelet, tmp_path: Path, caplog):
    token = tmp_path / "token"
    token.write_text("sa-token-123")
    pods = KubeletPods(kubelet.url, token_file=str(token), start=False)
    assert pods.refresh() and pods.lookup(POD_UID) is not None
    kubelet.up = False
    with caplog.at_level("WARNING", logger="greenwatch.agent.kubelet"):
        assert not pods.refresh() and not pods.refresh()
        assert pods.lookup(POD_UID) is not None  # the last good list stays in use
        kubelet.up = True
        assert pods.refresh()
    assert [r.getMessage().split(" (")[0].split(" answers")[0] for r in caplog.records] == [
        f"kubelet {kubelet.url}/pods unreachable", f"kubelet {kubelet.url}/pods"]
    wrong = KubeletPods(kubelet.url, start=False)  # no token: 401
    assert not wrong.refresh()


def test_resolver_labels_pods_with_namespace_and_name(kubelet: FakeKubelet, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("sa-token-123")
    pods = KubeletPods(kubelet.url, token_file=str(token), start=False)
    pods.refresh()
    proc = tmp_path / "proc"
    for pid, uid in ((101, POD_UID), (102, "11111111-2222-3333-4444-555555555555")):
        d = proc / str(pid)
        d.mkdir(parents=True)
        d.joinpath("stat").write_text(f"{pid} (python) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0")
        d.joinpath("status").write_text("Uid:\t0\t0\t0\t0\n")
        slice_uid = uid.replace("-", "_")
        d.joinpath("cgroup").write_text(
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/"
            f"cri-containerd-{CID}.scope\n")
    clock = [0.0]
    resolver = JobResolver(proc_root=str(proc), pod_lookup=pods.lookup, recheck_s=30, clock=lambda: clock[0])
    ref = resolver.resolve_pid(101)
    assert (ref.job_id, ref.user, ref.pod_namespace, ref.pod_name) == (
        f"k8s:{POD_UID}", "climate", "climate", "trainer-7d9f8b6c5d-x2kqp")
    unknown = resolver.resolve_pid(102)
    assert unknown.job_id == "k8s:11111111-2222-3333-4444-555555555555" and unknown.user is None
    # Unknown to the kubelet: looked up again after recheck_s, and named once the kubelet lists it.
    kubelet.doc = {"items": POD_LIST["items"] + [pod("11111111-2222-3333-4444-555555555555", "ml", "job-abc")]}
    pods.refresh()
    assert resolver.resolve_pid(102).user is None  # still cached
    clock[0] += 31
    assert resolver.resolve_pid(102).pod_name == "job-abc"
    # Without a kubelet nothing changes: user None, final.
    plain = JobResolver(proc_root=str(proc)).resolve_pid(101)
    assert plain.user is None and plain.pod_name is None
