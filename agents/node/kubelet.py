"""The kubelet of a node VM: registers its Node, renews its Lease, keeps its status Ready.

It reaches the API server only over the emulated network, at the cluster's ``VIP:6443``
(through the HAProxy VM, as on AKS-HCI), with the Kubernetes REST client of
:mod:`agents.kube.client`.  So a partition, a dead LB VM or a killed API server stops the
heartbeats, and the node lifecycle controller marks the Node ``Unknown`` after the grace
period, exactly as upstream.

What it does, after upstream's ``kubelet_node_status.go`` and ``nodelease`` controller:

* **register** (``POST /api/v1/nodes``) with labels, addresses, capacity, nodeInfo and the
  four conditions, retrying with a backoff (100 ms doubling to 7 s, scaled) until it works;
  a Node that already exists (``409 AlreadyExists``: the VM restarted) is taken over;
* **Lease** ``kube-node-lease/<node>``: created if missing, ``renewTime`` updated every
  ``Timers.lease_renew_interval``; a failed renewal is retried with a backoff (200 ms
  doubling to 7 s, scaled), a ``409 Conflict`` re-reads the Lease first;
* **status**: every ``Timers.node_status_update_frequency`` the Node is read back; when its
  ``Ready`` condition is not ``"True"`` (the lifecycle controller set ``Unknown`` while we
  were cut off), or ``node_status_report_frequency`` passed, the conditions are posted again
  (``PATCH .../status``, a merge patch).  ``spec.podCIDR`` (node IPAM) is picked up here.

The object builders are plain functions (no I/O) so tests check the bodies directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.kube.client import ApiError
from agents.timers import Timers

log = logging.getLogger("hcinet.kubelet")

Obj = dict[str, Any]

KUBELET_VERSION = "v1.26.6"
CONTAINERD_VERSION = "containerd://1.6.26"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # Lease.spec.leaseDurationSeconds as Kubernetes shows it (unscaled)
NODES = "/api/v1/nodes"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"

# AKS-HCI VM sizes (Get-AksHciVmSize): vCPUs, memory GiB.  Standard_K8S3_v1 is the default
# of New-AksHciCluster / New-AksHciNodePool.
VM_SIZES: dict[str, tuple[int, int]] = {
    "Standard_K8S_v1": (4, 2), "Standard_K8S2_v1": (2, 2), "Standard_K8S3_v1": (4, 6),
    "Standard_K8S4_v1": (4, 8), "Standard_K8S5_v1": (8, 8), "Standard_A2_v2": (2, 4),
    "Standard_A4_v2": (4, 8), "Standard_D2s_v3": (2, 8), "Standard_D4s_v3": (4, 16),
    "Standard_D8s_v3": (8, 32),
}
DEFAULT_VM_SIZE = "Standard_K8S3_v1"

OS_IMAGES = {"linux": "CBL-Mariner/Linux", "windows": "Windows Server 2022 Datacenter"}
KERNELS = {"linux": "5.15.131.1-2.cm2", "windows": "10.0.20348.2113"}


class KubeletConfigError(ValueError):
    """A node VM config key that does not validate; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeletConfig:
    node: str
    cluster: str
    pool: str
    os: str                # linux | windows
    apiserver_host: str
    apiserver_port: int
    max_pods: int = 110
    vm_size: str = DEFAULT_VM_SIZE
    time_scale: float = 1.0

    @classmethod
    def parse(cls, node: str, raw: Any) -> KubeletConfig:
        """From a node VM's config keys (docs/contracts-control-plane.md)."""
        def need(key: str, kind: type) -> Any:
            if key not in raw:
                raise KubeletConfigError(f"{key}: required for a node VM")
            value = raw[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise KubeletConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
            return value

        os_type = need("os", str)
        if os_type not in OS_IMAGES:
            raise KubeletConfigError(f"os: expected linux or windows, got {os_type!r}")
        host, sep, port_text = need("apiserver", str).rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise KubeletConfigError(f"apiserver: expected VIP:PORT, got {raw['apiserver']!r}")
        max_pods = raw.get("max_pods", 110)
        if not isinstance(max_pods, int) or isinstance(max_pods, bool) or max_pods < 1:
            raise KubeletConfigError(f"max_pods: expected a positive integer, got {max_pods!r}")
        vm_size = raw.get("vm_size", DEFAULT_VM_SIZE)
        if vm_size not in VM_SIZES:
            raise KubeletConfigError(f"vm_size: unknown size {vm_size!r} (known: {', '.join(sorted(VM_SIZES))})")
        scale = raw.get("time_scale", 1.0)
        if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0:
            raise KubeletConfigError(f"time_scale: expected a number > 0, got {scale!r}")
        return cls(node=node, cluster=need("cluster", str), pool=need("pool", str), os=os_type,
                   apiserver_host=host, apiserver_port=int(port_text), max_pods=max_pods,
                   vm_size=vm_size, time_scale=float(scale))


# --- object builders (no I/O) --------------------------------------------------------------


def rfc3339(t: float) -> str:
    """metav1.Time: seconds precision, ``2026-11-27T11:00:00Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(t: float) -> str:
    """metav1.MicroTime (Lease renewTime): ``2026-11-27T11:00:00.000000Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_labels(cfg: KubeletConfig) -> dict[str, str]:
    labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": cfg.os,
        "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": cfg.node, "kubernetes.io/os": cfg.os,
        "node.kubernetes.io/instance-type": cfg.vm_size,
        "beta.kubernetes.io/instance-type": cfg.vm_size,
        "agentpool": cfg.pool,
        "msft.microsoft/nodepool-name": cfg.pool,
    }
    if cfg.os == "windows":
        labels["node.kubernetes.io/windows-build"] = "10.0.20348"
    return labels


def conditions(t: float, *, transition: float | None = None) -> list[dict[str, str]]:
    """The four conditions a healthy kubelet posts (kubelet's setters.go texts)."""
    beat, since = rfc3339(t), rfc3339(transition if transition is not None else t)

    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": kind, "status": status, "lastHeartbeatTime": beat, "lastTransitionTime": since,
                "reason": reason, "message": message}

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]


def _resources(cfg: KubeletConfig) -> tuple[dict[str, str], dict[str, str]]:
    cpus, gib = VM_SIZES[cfg.vm_size]
    mem_ki = gib * 1024 * 1024 - 190_000  # what the guest sees, less firmware and kernel
    capacity = {"cpu": str(cpus), "memory": f"{mem_ki}Ki", "pods": str(cfg.max_pods),
                "ephemeral-storage": "101430960Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
    # kube-reserved + system-reserved + the hard eviction threshold (AKS-style reservations)
    reserved_ki = 750 * 1024 + 100 * 1024
    allocatable = {**capacity, "cpu": f"{cpus * 1000 - 140}m", "memory": f"{max(mem_ki - reserved_ki, 0)}Ki",
                   "ephemeral-storage": "93478772582"}
    return capacity, allocatable


def node_object(cfg: KubeletConfig, ip: str, now: float) -> dict[str, Any]:
    """The Node a kubelet registers (``POST /api/v1/nodes``)."""
    capacity, allocatable = _resources(cfg)
    ids = uuid.uuid5(uuid.NAMESPACE_DNS, f"{cfg.cluster}.{cfg.node}")
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node, "labels": node_labels(cfg),
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {},
        "status": {
            "capacity": capacity, "allocatable": allocatable,
            "conditions": conditions(now),
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": cfg.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": ids.hex, "systemUUID": str(ids).upper(), "bootID": str(uuid.uuid4()),
                "kernelVersion": KERNELS[cfg.os], "osImage": OS_IMAGES[cfg.os],
                "containerRuntimeVersion": CONTAINERD_VERSION, "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION, "operatingSystem": cfg.os, "architecture": "amd64",
            },
        },
    }


def lease_object(cfg: KubeletConfig, now: float, node_uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": cfg.node, "namespace": LEASE_NAMESPACE}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": cfg.node, "uid": node_uid}]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": cfg.node, "leaseDurationSeconds": LEASE_DURATION_S,
                     "renewTime": rfc3339_micro(now)}}


def ready_status(node: dict[str, Any]) -> str:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


class Backoff:
    """Exponential backoff: ``start`` doubling up to ``cap`` (wait.Backoff in client-go)."""

    def __init__(self, start: float, cap: float) -> None:
        self.start, self.cap = start, max(cap, start)
        self.next = start

    def step(self) -> float:
        delay, self.next = self.next, min(self.next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.next = self.start


# --- the loops -----------------------------------------------------------------------------


def _is_api_error(exc: BaseException, status: int) -> bool:
    return isinstance(exc, ApiError) and exc.status == status


def user_agent(os_type: str) -> str:
    """What a real kubelet sends (``kubelet/v1.26.6 (linux/amd64) kubernetes/<commit>``)."""
    return f"kubelet/{KUBELET_VERSION} ({os_type}/amd64) kubernetes/11902a8"


def client_timeout(timers: Timers) -> float:
    """kubelet's heartbeat client times out at the status update frequency (floor 0.5 s)."""
    return max(0.5, timers.node_status_update_frequency)


class Kubelet:
    """Registration, the Lease loop and the status loop over one :class:`KubeClient`."""

    def __init__(self, cfg: KubeletConfig, client: Any, node_ip: Callable[[], str], *,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.client = client
        self.node_ip = node_ip
        self.wall = wall
        self.timers = Timers(cfg.time_scale)
        self.registered = asyncio.Event()
        self.node_uid: str | None = None
        self.pod_cidr: str | None = None
        self.lease: dict[str, Any] | None = None
        self.last_renew: float | None = None     # wall time of the last acknowledged renewal
        self.last_status_post: float | None = None
        self.counts = {"register_attempts": 0, "lease_renewals": 0, "lease_failures": 0,
                       "status_posts": 0, "status_failures": 0}
        self.last_error = ""
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self.run())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:  # noqa: B036 - cancelled or failed: either way it is over
                pass
        self._tasks = []
        close = getattr(self.client, "aclose", None) or getattr(self.client, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    async def run(self) -> None:
        await self.register()
        await asyncio.gather(self.lease_loop(), self.status_loop())

    def stats(self) -> dict[str, Any]:
        return {"node": self.cfg.node, "registered": self.registered.is_set(), "pod_cidr": self.pod_cidr,
                "last_renew": self.last_renew and rfc3339_micro(self.last_renew), "last_error": self.last_error,
                "apiserver": f"{self.cfg.apiserver_host}:{self.cfg.apiserver_port}", **self.counts}

    def _failed(self, what: str, exc: BaseException) -> None:
        text = f"{what}: {type(exc).__name__}: {exc}"
        if text != self.last_error:  # log changes, not every retry
            log.warning("%s", text)
        self.last_error = text

    # -- registration --

    async def register(self) -> None:
        backoff = Backoff(0.1, self.timers.scaled(7.0))
        while not self.registered.is_set():
            self.counts["register_attempts"] += 1
            try:
                await self._try_register()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("registering node", exc)
                await asyncio.sleep(backoff.step())
        log.info("node %s registered with %s:%d", self.cfg.node, self.cfg.apiserver_host, self.cfg.apiserver_port)

    async def _try_register(self) -> None:
        body = node_object(self.cfg, self.node_ip(), self.wall())
        try:
            node = await self.client.create(NODES, body)
        except Exception as exc:
            if not _is_api_error(exc, 409):
                raise
            # kubelet restarted: the Node is ours already (tryRegisterWithAPIServer)
            node = await self.client.get(f"{NODES}/{self.cfg.node}")
            await self._post_status(node, force=True)
        self._learn(node)
        self.last_status_post = self.wall()
        self.registered.set()

    def _learn(self, node: Any) -> None:
        if not isinstance(node, dict):
            return
        self.node_uid = (node.get("metadata") or {}).get("uid") or self.node_uid
        cidr = (node.get("spec") or {}).get("podCIDR")
        if cidr and cidr != self.pod_cidr:
            log.info("node %s: podCIDR %s", self.cfg.node, cidr)
            self.pod_cidr = cidr

    # -- Lease --

    async def lease_loop(self) -> None:
        backoff = Backoff(0.2 * self.cfg.time_scale, self.timers.scaled(7.0))
        while True:
            try:
                await self.renew_lease()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counts["lease_failures"] += 1
                self._failed("renewing lease", exc)
                await asyncio.sleep(min(backoff.step(), self.timers.lease_renew_interval))
                continue
            backoff.reset()
            await asyncio.sleep(self.timers.lease_renew_interval)

    async def renew_lease(self) -> None:
        path = f"{LEASES}/{self.cfg.node}"
        now = self.wall()
        if self.lease is None:
            try:
                self.lease = await self.client.get(path)
            except Exception as exc:
                if not _is_api_error(exc, 404):
                    raise
                self.lease = await self.client.create(LEASES, lease_object(self.cfg, now, self.node_uid))
                self._renewed(now)
                return
        lease = dict(self.lease or {})
        spec = dict(lease.get("spec") or {})
        spec.update(holderIdentity=self.cfg.node, leaseDurationSeconds=LEASE_DURATION_S,
                    renewTime=rfc3339_micro(now))
        lease["spec"] = spec
        try:
            self.lease = await self.client.update(path, lease)
        except Exception as exc:
            if _is_api_error(exc, 409) or _is_api_error(exc, 404):
                self.lease = None  # stale or gone: read (or create) it again next try
            raise
        self._renewed(now)

    def _renewed(self, now: float) -> None:
        self.last_renew = now
        self.counts["lease_renewals"] += 1
        self.last_error = ""

    # -- status --

    async def status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timers.node_status_update_frequency)
            try:
                node = await self.client.get(f"{NODES}/{self.cfg.node}")
                self._learn(node)
                await self._post_status(node)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counts["status_failures"] += 1
                self._failed("updating node status", exc)

    async def _post_status(self, node: Any, *, force: bool = False) -> None:
        """Post the conditions when Ready is not True, or when the report frequency passed."""
        now = self.wall()
        ready = ready_status(node) if isinstance(node, dict) else "Unknown"
        stale = self.last_status_post is None or now - self.last_status_post >= self.timers.node_status_report_frequency
        if not (force or ready != "True" or stale):
            return
        transition = None if ready != "True" else _ready_since(node, now)
        patch = {"status": {"conditions": conditions(now, transition=transition),
                            "addresses": [{"type": "InternalIP", "address": self.node_ip()},
                                          {"type": "Hostname", "address": self.cfg.node}]}}
        await self.client.patch(f"{NODES}/{self.cfg.node}/status", patch)
        self.last_status_post = now
        self.counts["status_posts"] += 1
        if ready != "True":
            log.info("node %s: Ready was %s, posted Ready=True", self.cfg.node, ready)


def _ready_since(node: dict[str, Any], now: float) -> float:
    """Keep the Ready condition's lastTransitionTime when it stays True."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            text = cond.get("lastTransitionTime")
            if isinstance(text, str):
                try:
                    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
                except ValueError:
                    return now
    return now


# --- pods: the API side of the pod workers (agents/node/pods.py) ---------------------------

EVENT_QUEUE_MAX = 10_000


class SpamFilter:
    """client-go's ``EventSourceObjectSpamFilter``: a token bucket per involved object (burst
    25, one token back every 5 minutes, scaled); an event without a token is dropped."""

    BURST = 25
    REFILL_S = 300.0
    MAX_KEYS = 4096  # the filter's LRU cache size

    def __init__(self, timers: Timers, clock: Callable[[], float] = time.monotonic) -> None:
        self.refill = timers.scaled(self.REFILL_S)
        self.clock = clock
        self._buckets: dict[Any, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: Any) -> bool:
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(self.BURST), now))
        tokens = min(float(self.BURST), tokens + (now - at) / self.refill)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.MAX_KEYS:
            self._buckets.pop(next(iter(self._buckets)))
        return ok


class KubePodApi:
    """:class:`agents.node.pods.PodApi` over KubeClients: status writes (``PATCH
    .../pods/NAME/status``, a merge patch, on a pool of clients so that a burst of pods is
    written over several connections), the final delete, and Events posted in the
    background with the recorder's dedup (the same object, reason and message again bumps
    ``count`` and ``lastTimestamp`` of one Event, as client-go's EventCorrelator does, after
    its spam filter: :class:`SpamFilter`)."""

    def __init__(self, status_clients: list[Any], event_client: Any, node: str, *,
                 wall: Callable[[], float] = time.time, time_scale: float = 1.0) -> None:
        if not status_clients:
            raise ValueError("status_clients: at least one client")
        self.node = node
        self.wall = wall
        self.event_client = event_client
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        for client in status_clients:
            self._idle.put_nowait(client)
        self._events: asyncio.Queue[tuple[Obj, str, str, str, str, float]] = asyncio.Queue(EVENT_QUEUE_MAX)
        self._seen: dict[tuple[str, str, str, str, str], tuple[str, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._n = 0
        self._spam = SpamFilter(Timers(time_scale))
        self.counts = {"events": 0, "events_dropped": 0, "event_failures": 0, "status_patches": 0,
                       "events_spam_filtered": 0}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._post_events())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def patch_status(self, namespace: str, name: str, status: Obj) -> Obj | None:
        from agents.kube.client import api_path

        client = await self._idle.get()
        try:
            out: Obj = await client.patch(api_path("pods", namespace, name, "status"), {"status": status})
        finally:
            self._idle.put_nowait(client)
        self.counts["status_patches"] += 1
        return out

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's final delete of a terminated pod (``gracePeriodSeconds: 0``, with the
        UID as a precondition so that a recreated namesake is left alone)."""
        from agents.kube.client import api_path

        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        client = await self._idle.get()
        try:
            await client.request("DELETE", api_path("pods", namespace, name), body=body)
        finally:
            self._idle.put_nowait(client)

    def event(self, pod: Obj, etype: str, reason: str, message: str, field_path: str = "") -> None:
        meta = pod.get("metadata") or {}
        if not self._spam.allow((str(meta.get("namespace")), str(meta.get("uid") or meta.get("name")))):
            self.counts["events_spam_filtered"] += 1
            return
        try:
            self._events.put_nowait((pod, etype, reason, message, field_path, self.wall()))
        except asyncio.QueueFull:
            self.counts["events_dropped"] += 1

    async def _post_events(self) -> None:
        while True:
            pod, etype, reason, message, field_path, at = await self._events.get()
            try:
                await self._post(pod, etype, reason, message, field_path, at)
                self.counts["events"] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # best effort, as the kubelet's recorder
                self.counts["event_failures"] += 1
                log.debug("event %s: %s", reason, exc)

    async def _post(self, pod: Obj, etype: str, reason: str, message: str, field_path: str, at: float) -> None:
        from agents.kube.client import api_path

        meta = pod.get("metadata") or {}
        ns = str(meta.get("namespace") or "default")
        key = (ns, str(meta.get("uid") or meta.get("name")), reason, message, field_path)
        stamp = rfc3339(at)
        seen = self._seen.get(key)
        if seen is not None:
            name, count = seen
            try:
                await self.event_client.patch(api_path("events", ns, name),
                                              {"count": count + 1, "lastTimestamp": stamp})
                self._seen[key] = (name, count + 1)
                return
            except ApiError as exc:
                if exc.status != 404:
                    raise
        self._n += 1
        name = f"{meta.get('name')}.{int(at * 1e9) + self._n:x}"
        involved = {"kind": "Pod", "namespace": ns, "name": meta.get("name"), "uid": meta.get("uid"),
                    "apiVersion": "v1", "resourceVersion": meta.get("resourceVersion")}
        if field_path:
            involved["fieldPath"] = field_path
        await self.event_client.create(api_path("events", ns), {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved, "reason": reason, "message": message, "type": etype, "count": 1,
            "source": {"component": "kubelet", "host": self.node}, "firstTimestamp": stamp,
            "lastTimestamp": stamp, "reportingComponent": "kubelet", "reportingInstance": self.node})
        if len(self._seen) > EVENT_QUEUE_MAX:
            self._seen.clear()
        self._seen[key] = (name, 1)


# --- Calico IPAM: the block allocator shared through the API server ------------------------

CALICO_IPAM_NAMESPACE = "kube-system"
CALICO_IPAM_CONFIGMAP = "calico-ipam-blocks"
IPAM_RETRIES = 50


class CalicoIpamSync:
    """Calico's block IPAM is cluster-wide state (its IPAMBlock / BlockAffinity resources).
    Here the blocks live in one ConfigMap, ``kube-system/calico-ipam-blocks`` (``data.blocks``:
    :meth:`BlockAllocator.claimed_blocks` as JSON), written with optimistic concurrency: a
    node that needs a block reads the ConfigMap, claims the lowest free block in it and
    writes it back with the resourceVersion it read; a 409 Conflict (another node claimed
    meanwhile) is retried from a fresh read, as Calico's compare-and-swap on a block is.

    Each node allocates addresses only from its own (affine) blocks, so only block claims
    need the API server; the allocations inside this node's blocks are this node's and are
    written along with the next claim.  Other nodes' blocks come from the ConfigMap (its
    watch: :meth:`apply`), and give the routes to them (``CalicoPlugin.remote_cidrs``)."""

    def __init__(self, client: Any, node: str, *, windows: bool = False, allocator: Any = None) -> None:
        from agents.cni import BlockAllocator

        self.client = client
        self.node = node
        self.windows = windows
        self.allocator = allocator if allocator is not None else BlockAllocator()
        self.resource_version: str | None = None
        self.lock = asyncio.Lock()
        self.counts = {"claims": 0, "conflicts": 0, "reads": 0, "applied": 0, "released_nodes": 0,
                       "released_blocks": 0}

    @property
    def path(self) -> str:
        from agents.kube.client import api_path

        return api_path("configmaps", CALICO_IPAM_NAMESPACE, CALICO_IPAM_CONFIGMAP)

    def _mine(self, block: Mapping[str, Any]) -> bool:
        return str(block.get("affinity", "")).removeprefix("host:") == self.node

    def merge(self, blocks: list[dict[str, Any]]) -> None:
        """The ConfigMap's blocks, with this node's own blocks as this node has them."""
        local = [b for b in self.allocator.claimed_blocks() if self._mine(b)]
        have = {b["cidr"] for b in local}
        restored = [b for b in blocks if self._mine(b) and b.get("cidr") not in have]  # after a restart
        others = [b for b in blocks if not self._mine(b) and b.get("cidr") not in have]
        self.allocator.load(local + restored + others)

    @staticmethod
    def parse(obj: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        text = ((obj or {}).get("data") or {}).get("blocks") or "[]"
        try:
            blocks = json.loads(text)
        except ValueError:
            log.warning("%s: data.blocks is not JSON; ignored", CALICO_IPAM_CONFIGMAP)
            return []
        return [b for b in blocks if isinstance(b, dict) and "cidr" in b] if isinstance(blocks, list) else []

    def apply(self, obj: Mapping[str, Any] | None) -> None:
        """A watch event of the ConfigMap (None: it was deleted)."""
        self.merge(self.parse(obj))
        self.counts["applied"] += 1

    async def read(self) -> list[dict[str, Any]]:
        self.counts["reads"] += 1
        try:
            obj = await self.client.get(self.path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.resource_version = None
            return []
        self.resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or "") or None
        return self.parse(obj)

    def free(self, version: int = 4) -> int:
        """Addresses left in this node's blocks of one IP version (IPv4 by default)."""
        return sum(len(self.allocator.block(c).unallocated) for c in self.allocator.blocks_of(self.node, version))

    def versions(self) -> list[int]:
        """The IP versions this node's pods get: IPv4, and IPv6 when the pools have an IPv6
        pool and the node is Linux (Calico for Windows has no IPv6)."""
        return [4] + ([6] if self.allocator.has_version(6) and not self.windows else [])

    def _short(self, need: int) -> list[int]:
        return [v for v in self.versions() if self.free(v) < need]

    async def ensure_capacity(self, need: int = 1) -> None:
        """Make sure this node's blocks of each of its IP versions have ``need`` free
        addresses, claiming blocks (through the API server) until they do."""
        if not self._short(need):
            return
        async with self.lock:
            for _ in range(IPAM_RETRIES):
                if not self._short(need):
                    return
                self.merge(await self.read())
                short = self._short(need)
                if not short:
                    return
                before = self.allocator.claimed_blocks()
                cidrs = [self.allocator.claim_block(self.node, v, windows=self.windows) for v in short]
                if await self._write():
                    self.counts["claims"] += len(cidrs)
                    log.info("calico ipam: node %s claimed block %s", self.node, ", ".join(cidrs))
                    continue
                self.allocator.load(before)  # someone else wrote first: read again
                self.counts["conflicts"] += 1
                await asyncio.sleep(0.01 * (1 + random.random()))  # de-synchronise the racers
            raise TimeoutError(f"calico ipam: could not claim a block after {IPAM_RETRIES} attempts")

    async def release_node(self, node: str) -> list[str]:
        """A deleted node's blocks (and every address in them) back to the pool, written with
        the same compare-and-swap as a claim (Calico kube-controllers' IPAM clean-up of a
        deleted Node: agents/node/ipamgc.py decides who and when); returns the blocks."""
        if node == self.node:
            raise ValueError(f"node: {node} would release its own blocks")
        async with self.lock:
            for _ in range(IPAM_RETRIES):
                self.merge(await self.read())
                if not self.allocator.blocks_of(node):
                    return []  # nothing (left) to release: another node did it, or none claimed
                before = self.allocator.claimed_blocks()
                released = self.allocator.release_node(node)
                if await self._write():
                    self.counts["released_nodes"] += 1
                    self.counts["released_blocks"] += len(released)
                    log.info("calico ipam: released the blocks of deleted node %s: %s", node, ", ".join(released))
                    return released
                self.allocator.load(before)
                self.counts["conflicts"] += 1
                await asyncio.sleep(0.01 * (1 + random.random()))
            raise TimeoutError(f"calico ipam: could not release node {node}'s blocks after {IPAM_RETRIES} attempts")

    async def _write(self) -> bool:
        from agents.kube.client import api_path

        body: Obj = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": CALICO_IPAM_CONFIGMAP, "namespace": CALICO_IPAM_NAMESPACE,
                                  "labels": {"app.kubernetes.io/managed-by": "calico-ipam"}},
                     "data": {"blocks": json.dumps(self.allocator.claimed_blocks(), separators=(",", ":"))}}
        try:
            if self.resource_version is None:
                out = await self.client.create(api_path("configmaps", CALICO_IPAM_NAMESPACE), body)
            else:
                body["metadata"]["resourceVersion"] = self.resource_version
                out = await self.client.update(self.path, body)
        except ApiError as exc:
            if exc.status in (409, 404):  # Conflict / AlreadyExists, or deleted meanwhile
                return False
            raise
        self.resource_version = str((out.get("metadata") or {}).get("resourceVersion") or "") or None
        return True

    def stats(self) -> dict[str, Any]:
        return {"node": self.node, "blocks": self.allocator.blocks_of(self.node), "free": self.free(),
                "affinities": self.allocator.affinities(), **self.counts}
