"""Pod names and namespaces from the node's kubelet, for jobs known only as ``k8s:<pod uid>``.

The cgroup path of a containerised process gives its pod's UID and nothing else
(docs/job-mapping.md).  The kubelet of the same node knows every pod it runs:
``GET <kubelet_url>/pods`` returns a ``PodList`` (the read-only port 10255 where it is
still enabled, or the authenticated port 10250 with a service-account token that may
``get`` ``nodes/proxy``).  :class:`KubeletPods` keeps that list cached and refreshes it
in a background thread, so the agent's sampling loop never waits on the network:
:meth:`KubeletPods.lookup` answers from the cache, and an unknown UID only *asks* for an
early refresh (at most one every ``min_refresh_s``).  An unreachable kubelet is logged once
(and once when it is back); pods then stay known by UID only.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from greenwatch.config import AgentConfig

__all__ = ["PodInfo", "KubeletPods", "parse_pod_list", "normalise_uid"]

log = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024 * 1024  # a PodList of a node with hundreds of pods is a few MB


@dataclass(frozen=True)
class PodInfo:
    """What the kubelet says about one pod."""

    uid: str
    namespace: str
    name: str


def normalise_uid(uid: str) -> str:
    """Compare UIDs without case and dashes: cgroup paths and the API spell them differently
    (``_`` for ``-`` in systemd slices; static pods use a 32-digit hash without dashes)."""
    return uid.replace("-", "").replace("_", "").lower()


def parse_pod_list(doc: Any) -> dict[str, PodInfo]:
    """``{normalised uid: PodInfo}`` from a decoded ``PodList``; malformed items are skipped."""
    out: dict[str, PodInfo] = {}
    items = doc.get("items") if isinstance(doc, dict) else None
    for item in items if isinstance(items, list) else []:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict):
            continue
        uid, ns, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if isinstance(uid, str) and isinstance(ns, str) and isinstance(name, str) and uid and ns and name:
            out[normalise_uid(uid)] = PodInfo(uid, ns, name)
    return out


class KubeletPods:
    """A cached, background-refreshed view of the kubelet's pods."""

    def __init__(self, url: str, *, token_file: str = "", ca_file: str = "", insecure_tls: bool = False,
                 refresh_s: float = 30.0, min_refresh_s: float = 5.0, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        self.url = url.rstrip("/") + "/pods"
        self.token_file = token_file
        self.refresh_s, self.min_refresh_s, self.timeout_s = refresh_s, min_refresh_s, timeout_s
        self._clock = clock
        self._context: ssl.SSLContext | None = None
        if self.url.startswith("https:"):
            self._context = ssl.create_default_context(cafile=ca_file or None)
            if insecure_tls:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self._pods: dict[str, PodInfo] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_fetch = -1e18
        self._failing: str | None = None
        self.fetches = 0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name="greenwatch-kubelet", daemon=True)
            self._thread.start()

    def lookup(self, pod_uid: str) -> PodInfo | None:
        """The pod with this UID, from the cache; an unknown UID asks for an early refresh."""
        with self._lock:
            info = self._pods.get(normalise_uid(pod_uid))
        if info is None:
            self._wake.set()
        return info

    def refresh(self) -> bool:
        """Fetch the pod list now (blocking); True on success.  The background thread calls this."""
        self._last_fetch = self._clock()
        try:
            pods = parse_pod_list(self._fetch())
        except (OSError, ValueError, urllib.error.URLError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            if self._failing is None:
                log.warning("kubelet %s unreachable (%s): pods are known by UID only until it answers",
                            self.url, problem)
            self._failing = problem
            return False
        if self._failing is not None:
            log.warning("kubelet %s answers again (%d pods)", self.url, len(pods))
            self._failing = None
        with self._lock:
            self._pods = pods
        self.fetches += 1
        return True

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)

    def _fetch(self) -> Any:
        req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        if self.token_file:
            # Read on every fetch: projected service-account tokens are rotated (hourly).
            # Kubernetes mounts them 0644, so greenwatch.secretfiles' owner-only check does not apply.
            with open(self.token_file) as fh:
                req.add_header("Authorization", f"Bearer {fh.read().strip()}")
        with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._context) as resp:
            body = resp.read(_MAX_BODY + 1)
        if len(body) > _MAX_BODY:
            raise ValueError(f"pod list larger than {_MAX_BODY} bytes")
        return json.loads(body)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            # Sleep until the regular refresh, or until a lookup missed (but not more often
            # than min_refresh_s: a process of a pod the kubelet does not list must not
            # turn into a request per sample).
            self._wake.wait(self.refresh_s)
            self._wake.clear()
            wait = self.min_refresh_s - (self._clock() - self._last_fetch)
            if wait > 0 and self._stop.wait(wait):
                return


def kubelet_from_config(a: AgentConfig) -> KubeletPods | None:
    """A :class:`KubeletPods` from ``[agent] kubelet_*``, or None when ``kubelet_url`` is empty."""
    if not a.kubelet_url:
        return None
    return KubeletPods(a.kubelet_url, token_file=a.kubelet_token_file, ca_file=a.kubelet_ca_file,
                       insecure_tls=a.kubelet_insecure_tls, refresh_s=a.kubelet_refresh_s)
