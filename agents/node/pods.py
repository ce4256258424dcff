"""The kubelet's pod lifecycle: pods bound to this node get a network namespace, run their
containers' emulated apps, are probed, and report status and Events as a kubelet does.

Two layers, like the rest of the node:

* **the record** (sans-IO): :class:`PodRecord` and :class:`Container` hold what the kubelet
  knows of one pod (addresses, each container's state, restarts, probe results) and build
  the ``status`` it reports (:meth:`PodRecord.status`), after upstream's
  ``kubelet_pods.go`` (``generateAPIPodStatus``, ``getPhase``) and ``status/generate.go``
  (the conditions): ``phase``, ``conditions`` (``Initialized``, ``Ready``,
  ``ContainersReady``, ``PodScheduled``, with ``lastTransitionTime`` kept while a status
  stays), ``hostIP``, ``podIP`` / ``podIPs``, ``startTime``, ``containerStatuses``
  (``state``, ``lastState``, ``ready``, ``started``, ``restartCount``, ``image``,
  ``imageID``, ``containerID``), ``qosClass``.  Tested directly.
* **the workers** (asyncio): :class:`PodManager` is fed Pod watch events (a fieldSelector
  ``spec.nodeName=<node>`` informer) and runs one :class:`PodWorker` per pod: CNI ADD
  (``NodeDatapath.add_pod``) -> a :class:`~agents.node.netapi.PodNetAPI` on the pod's stack ->
  each container's image resolved (:mod:`.images`) and its app started
  (:func:`~agents.node.containers.make_container_app`) -> probes
  (:mod:`.probes`, attempts from the node's own stack as the kubelet's prober does) ->
  restarts with CrashLoopBackOff; on deletion the apps get SIGTERM and CNI DEL releases the
  address.  Status writes are coalesced per pod and Events deduplicated (count bumped) by
  the API adapter (:class:`PodApi`).

Events (reason: message), as the kubelet words them: ``Pulling``, ``Pulled`` (``Successfully
pulled image ... in ...`` or ``Container image ... already present on machine``, by
``imagePullPolicy``), ``Created``, ``Started``, ``Killing``, ``Failed`` / ``BackOff`` for
image errors (from :mod:`.images`), ``BackOff`` for a crash loop, ``Unhealthy`` for probe
failures, ``FailedCreatePodSandBox`` when CNI ADD fails, ``EmulatedImage`` for unknown images.
``Scheduled`` is the scheduler's.

Timers (probe periods, back-offs) are scaled by the scenario's ``time_scale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from agents.timers import Timers

from .images import ContainerPlan, ImageError, parse_image, plan_container, pull_backoff
from .probes import Probe, ProbeError, failure_event, probes_of

__all__ = [
    "CRASH_BACKOFF_INITIAL", "CRASH_BACKOFF_MAX", "Container", "PodApi", "PodManager", "PodRecord",
    "PodWorker", "crash_backoff", "pod_key", "pod_resolv_conf", "pull_policy", "qos_class",
]

log = logging.getLogger("hcinet.kubelet.pods")

Obj = dict[str, Any]

# kubelet's container restart back-off (pkg/kubelet/kubelet.go: backOffPeriod 10 s,
# MaxContainerBackOff 300 s), reset after a container ran 10 minutes.
CRASH_BACKOFF_INITIAL = 10.0
CRASH_BACKOFF_MAX = 300.0
CRASH_BACKOFF_RESET = 600.0
SANDBOX_RETRY = 1.0        # unscaled seconds between CNI ADD attempts after a failure
STOP_TIMEOUT = 2.0         # an app that does not stop in this long is abandoned (SIGKILL)
PULL_WAIT = 0.5            # unscaled seconds an image error shows ErrImagePull before ImagePullBackOff
STATUS_RETRY = 0.2         # seconds before a failed status write is tried again
CONDITION_ORDER = ("Initialized", "Ready", "ContainersReady", "PodScheduled")
TERMINAL = ("Succeeded", "Failed")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def crash_backoff(restarts: int) -> float:
    """Unscaled seconds before restart ``restarts + 1`` of a crashing container: 10 s doubling
    to 300 s (the first restart waits 10 s too: the kubelet's back-off starts at once)."""
    return min(CRASH_BACKOFF_INITIAL * 2 ** max(restarts - 1, 0), CRASH_BACKOFF_MAX)


def pull_policy(container: Mapping[str, Any]) -> str:
    """``imagePullPolicy`` defaulting (``SetDefaults_Container``): ``Always`` for ``:latest``
    or no tag, else ``IfNotPresent``."""
    policy = container.get("imagePullPolicy")
    if policy in ("Always", "IfNotPresent", "Never"):
        return str(policy)
    try:
        ref = parse_image(str(container.get("image") or ""))
    except ValueError:
        return "IfNotPresent"
    return "Always" if ref.tag == "latest" and not ref.digest else "IfNotPresent"


def qos_class(spec: Mapping[str, Any]) -> str:
    """``GetPodQOS``: Guaranteed when every container's cpu and memory limits equal its
    requests, BestEffort when none has any, Burstable otherwise."""
    containers = list(spec.get("containers") or ())
    any_set = False
    guaranteed = bool(containers)
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        if limits or requests:
            any_set = True
        for kind in ("cpu", "memory"):
            limit = limits.get(kind)
            if limit is None or requests.get(kind, limit) != limit:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def pod_resolv_conf(spec: Mapping[str, Any], namespace: str, node_conf: Any = None, *,
                    cluster_dns: tuple[str, ...] = ("10.96.0.10",)) -> Any:
    """The pod's /etc/resolv.conf by ``dnsPolicy`` (kubelet ``dns.go``): ``ClusterFirst`` (the
    default; a hostNetwork pod falls back to ``Default`` unless ``ClusterFirstWithHostNet``)
    gives the cluster DNS, the search list ``<ns>.svc.cluster.local svc.cluster.local
    cluster.local`` + the node's, ``ndots:5``; ``Default`` the node's own; ``None`` only
    ``dnsConfig``, which the others are merged with (nameservers and searches appended,
    ``options`` override)."""
    from dataclasses import replace

    from agents.dns.resolver import ResolvConf

    node = node_conf if isinstance(node_conf, ResolvConf) else ResolvConf()
    policy = str(spec.get("dnsPolicy") or "ClusterFirst")
    host_net = bool(spec.get("hostNetwork"))
    if policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not host_net):
        conf = ResolvConf.for_pod(namespace, cluster_dns=cluster_dns, host_search=node.search)
    elif policy == "None":
        conf = ResolvConf()
    else:
        conf = node
    extra = spec.get("dnsConfig") or {}
    if not isinstance(extra, Mapping):
        return conf
    servers = tuple(dict.fromkeys((*conf.nameservers, *(str(x) for x in extra.get("nameservers") or ()))))
    search = tuple(dict.fromkeys((*conf.search, *(str(x) for x in extra.get("searches") or ()))))
    ndots = conf.ndots
    for opt in extra.get("options") or ():
        if isinstance(opt, Mapping) and opt.get("name") == "ndots":
            with contextlib.suppress(TypeError, ValueError):
                ndots = int(str(opt.get("value")))
    return replace(conf, nameservers=servers[:3], search=search[:32], ndots=ndots)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the record (sans-IO) ------------------------------------------------------------------


class Container:
    """One container of a pod as the kubelet tracks it."""

    __slots__ = ("spec", "name", "image", "plan", "error", "state", "reason", "message", "started_at",
                 "finished_at", "exit_code", "last_terminated", "restart_count", "container_id", "ready",
                 "started", "pull_failures", "has_readiness", "has_startup")

    def __init__(self, spec: Mapping[str, Any], node_os: str) -> None:
        self.spec = spec
        self.name = str(spec.get("name") or "")
        self.image = str(spec.get("image") or "")
        resolved = plan_container(spec, node_os)
        self.plan: ContainerPlan | None = resolved if isinstance(resolved, ContainerPlan) else None
        self.error: ImageError | None = resolved if isinstance(resolved, ImageError) else None
        self.state = "waiting"
        self.reason = "ContainerCreating"
        self.message = ""
        self.started_at = 0.0
        self.finished_at = 0.0
        self.exit_code = 0
        self.last_terminated: dict[str, Any] | None = None
        self.restart_count = 0
        self.container_id = ""
        self.ready = False
        self.started = False
        self.pull_failures = 0
        self.has_readiness = bool(spec.get("readinessProbe"))
        self.has_startup = bool(spec.get("startupProbe"))

    # -- transitions --

    def wait(self, reason: str, message: str = "") -> None:
        self.state, self.reason, self.message = "waiting", reason, message
        self.ready = self.started = False

    def run(self, now: float) -> None:
        self.state, self.reason, self.message = "running", "", ""
        self.started_at = now
        self.container_id = "containerd://" + secrets.token_hex(32)
        self.started = not self.has_startup
        self.ready = self.started and not self.has_readiness

    def terminate(self, code: int, now: float, message: str = "") -> None:
        self.state = "terminated"
        self.exit_code = code
        self.finished_at = now
        self.reason = "Completed" if code == 0 else "Error"
        self.message = message
        self.ready = self.started = False

    def crash_loop(self, delay: float, pod: str) -> None:
        """The terminated state becomes lastState; waiting CrashLoopBackOff until the restart."""
        self.last_terminated = self._terminated()
        self.wait("CrashLoopBackOff", f"back-off {_go_duration(delay)} restarting failed "
                                      f"container={self.name} pod={pod}")

    def restarting(self) -> None:
        if self.state == "terminated":
            self.last_terminated = self._terminated()
        self.restart_count += 1

    # -- reporting --

    @property
    def image_ref(self) -> str:
        if self.plan is not None:
            return str(self.plan.ref)
        return self.image

    def _terminated(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason,
                               "startedAt": rfc3339(self.started_at) if self.started_at else None,
                               "finishedAt": rfc3339(self.finished_at)}
        if self.message:
            out["message"] = self.message
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    def status(self) -> dict[str, Any]:
        """One ``containerStatuses`` entry."""
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": rfc3339(self.started_at)}}
        elif self.state == "terminated":
            state = {"terminated": self._terminated()}
        else:
            waiting = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name, "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
            "ready": self.ready, "restartCount": self.restart_count, "image": self.image_ref,
            "imageID": "", "started": self.state == "running" and self.started,
        }
        if self.plan is not None and self.container_id:
            repo = self.plan.ref.repository
            out["imageID"] = f"{repo}@sha256:{_digest(str(self.plan.ref))}"
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def _go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` for the whole seconds the back-off uses (``5m0s``)."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s}s"
    h, m = divmod(m, 60)
    return f"{h}h{m}m{s}s"


class PodRecord:
    """What the kubelet knows of one pod; :meth:`status` is what it reports."""

    def __init__(self, obj: Obj, *, node_ip: str, node_os: str, now: float) -> None:
        meta = obj.get("metadata") or {}
        self.obj = obj
        self.namespace = str(meta.get("namespace") or "default")
        self.name = str(meta.get("name") or "")
        self.uid = str(meta.get("uid") or "")
        self.key = f"{self.namespace}/{self.name}"
        spec = obj.get("spec") or {}
        self.spec = spec
        self.node_ip = node_ip
        self.node_os = node_os
        self.restart_policy = str(spec.get("restartPolicy") or "Always")
        self.host_network = bool(spec.get("hostNetwork"))
        self.ips: list[str] = []
        self.start_time = now
        self.containers = [Container(c, node_os) for c in spec.get("containers") or ()]
        self.init_containers = [str(c.get("name") or "") for c in spec.get("initContainers") or ()]
        self.rejected: tuple[str, str] | None = None   # (reason, message): admission refused it
        self.deleting = False
        self._since: dict[str, tuple[str, float]] = {}  # condition type -> (status, since)

    @property
    def label(self) -> str:
        """``name_namespace(uid)`` as the kubelet names a pod in messages."""
        return f"{self.name}_{self.namespace}({self.uid})"

    @property
    def hostname(self) -> str:
        """``os.Hostname()`` inside the pod: ``spec.hostname`` or the pod's name (63 chars)."""
        return str(self.spec.get("hostname") or self.name)[:63]

    def container(self, name: str) -> Container | None:
        for c in self.containers:
            if c.name == name:
                return c
        return None

    # -- phase and conditions --

    def phase(self) -> str:
        """``getPhase`` (kubelet_pods.go)."""
        if self.rejected is not None:
            return "Failed"
        running = waiting = stopped = succeeded = 0
        for c in self.containers:
            if c.state == "running":
                running += 1
            elif c.state == "terminated":
                stopped += 1
                succeeded += c.exit_code == 0
            elif c.last_terminated is not None:
                stopped += 1
                succeeded += c.last_terminated.get("exitCode") == 0
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped:
            if self.restart_policy == "Always":
                return "Running"
            if stopped == succeeded:
                return "Succeeded"
            if self.restart_policy == "Never":
                return "Failed"
            return "Running"
        return "Pending"

    def _condition(self, kind: str, status: str, now: float, reason: str = "", message: str = "") -> dict[str, Any]:
        prev = self._since.get(kind)
        since = prev[1] if prev is not None and prev[0] == status else now
        self._since[kind] = (status, since)
        out: dict[str, Any] = {"type": kind, "status": status, "lastProbeTime": None,
                               "lastTransitionTime": rfc3339(since)}
        if reason:
            out["reason"] = reason
        if message:
            out["message"] = message
        return out

    def conditions(self, phase: str, now: float) -> list[dict[str, Any]]:
        """``GeneratePodInitializedCondition`` / ``GeneratePodReadyCondition`` /
        ``GenerateContainersReadyCondition`` and PodScheduled, in the kubelet's order."""
        unready = [c.name for c in self.containers if not c.ready]
        if phase == "Succeeded":
            ready = ("False", "PodCompleted", "")
        elif unready:
            ready = ("False", "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
        else:
            ready = ("True", "", "")
        if phase == "Succeeded":
            ready_pod = ready
        elif not unready:
            gates = self._unready_gates()
            ready_pod = ("False", "ReadinessGatesNotReady",
                         f"corresponding condition of pod readiness gate \"{gates[0]}\" does not exist.") \
                if gates else ready
        else:
            ready_pod = ready
        return [
            self._condition("Initialized", "True", now),
            self._condition("Ready", ready_pod[0], now, ready_pod[1], ready_pod[2]),
            self._condition("ContainersReady", ready[0], now, ready[1], ready[2]),
            self._condition("PodScheduled", "True", now),
        ]

    def _unready_gates(self) -> list[str]:
        """``spec.readinessGates`` whose condition is not True in the object's status."""
        have = {c.get("type"): c.get("status") for c in (self.obj.get("status") or {}).get("conditions") or ()
                if isinstance(c, dict)}
        return [str(g.get("conditionType")) for g in self.spec.get("readinessGates") or ()
                if isinstance(g, dict) and have.get(g.get("conditionType")) != "True"]

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers) and self.phase() == "Running"

    def status(self, now: float) -> dict[str, Any]:
        """The pod's ``status`` as the kubelet writes it."""
        if self.rejected is not None:
            reason, message = self.rejected
            return {"phase": "Failed", "reason": reason, "message": message, "startTime": rfc3339(self.start_time)}
        phase = self.phase()
        out: dict[str, Any] = {
            "phase": phase,
            "conditions": self.conditions(phase, now),
            "hostIP": self.node_ip,
            "startTime": rfc3339(self.start_time),
            "containerStatuses": [c.status() for c in self.containers],
            "qosClass": qos_class(self.spec),
        }
        if self.ips:
            out["podIP"] = self.ips[0]
            out["podIPs"] = [{"ip": ip} for ip in self.ips]
        if self.init_containers:
            out["initContainerStatuses"] = [self._init_status(name) for name in self.init_containers]
        return out

    def _init_status(self, name: str) -> dict[str, Any]:
        """Init containers are emulated as having run to completion before the apps start."""
        started = rfc3339(self.start_time)
        return {"name": name, "ready": True, "restartCount": 0, "image": "", "imageID": "",
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                         "finishedAt": started}}, "lastState": {}}


# --- the API side ---------------------------------------------------------------------------


class PodApi(Protocol):
    """What the pod workers need of the API server (the node VM adapts a KubeClient)."""

    async def patch_status(self, namespace: str, name: str, status: Obj) -> Obj | None: ...

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None: ...

    def event(self, pod: Obj, etype: str, reason: str, message: str, field_path: str = "") -> None: ...


# --- the workers (asyncio) ------------------------------------------------------------------


AppKwargs = Callable[[ContainerPlan], Mapping[str, Any]]


class PodManager:
    """Every pod bound to this node: one worker each, status writes, and the exec verb."""

    def __init__(self, *, node_name: str, node_ip: str, node_os: str, datapath: Any, node_net: Any,
                 api: PodApi, timers: Timers | None = None, max_pods: int = 110,
                 node_dns: Any = None, app_kwargs: AppKwargs | None = None,
                 wall: Callable[[], float] = time.time, status_writers: int = 1,
                 cni_prepare: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.node_name = node_name
        self.node_ip = node_ip
        self.node_os = node_os
        self.datapath = datapath
        self.node_net = node_net
        self.api = api
        self.timers = timers or Timers()
        self.max_pods = max_pods
        self.node_dns = node_dns  # the node's own resolv.conf (agents.dns.ResolvConf)
        self.app_kwargs = app_kwargs
        self.wall = wall
        self.cni_prepare = cni_prepare
        self.workers: dict[str, PodWorker] = {}
        self.images: set[str] = set()       # pulled on this node
        self.counts: dict[str, int] = dict.fromkeys(
            ("pods_started", "pods_stopped", "status_writes", "status_failures", "cni_add", "cni_del",
             "cni_failures", "container_starts", "container_restarts", "probe_attempts", "probe_failures",
             "rejected", "final_deletes"), 0)
        self._dirty: dict[str, None] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}  # pod key -> its old instance stopping
        self._written: dict[str, Obj] = {}
        self._wake = asyncio.Event()
        self._writers: list[asyncio.Task[None]] = []
        self._n_writers = max(1, status_writers)
        self._closed = False

    # -- life cycle --

    def start(self) -> None:
        if not self._writers:
            self._writers = [asyncio.ensure_future(self._write_loop()) for _ in range(self._n_writers)]

    async def close(self) -> None:
        """The node is going away: every pod stops (its namespace goes with the VM)."""
        self._closed = True
        await asyncio.gather(*(w.stop(release=False) for w in list(self.workers.values())),
                             return_exceptions=True)
        self.workers.clear()
        for task in self._writers:
            task.cancel()
        for task in self._writers:
            with contextlib.suppress(BaseException):
                await task
        self._writers = []

    # -- watch events --

    def sync(self, obj: Obj) -> None:
        """ADDED / MODIFIED Pod bound to this node (the informer's on_add / on_update)."""
        if self._closed:
            return
        meta = obj.get("metadata") or {}
        if (obj.get("spec") or {}).get("nodeName") not in (None, self.node_name):
            return self.forget(obj)
        key = pod_key(obj)
        uid = str(meta.get("uid") or "")
        worker = self.workers.get(key)
        if worker is not None and worker.record.uid != uid:
            # the same name, another pod: the old one was deleted and this one recreated
            self._retire(worker, final_delete=False)
            worker = None
        if meta.get("deletionTimestamp"):
            if worker is not None:
                self._retire(worker, final_delete=True)
            return None
        if worker is None:
            if (obj.get("status") or {}).get("phase") in TERMINAL:
                return None  # finished before we knew it (a node restart): nothing to run
            worker = PodWorker(self, obj)
            self.workers[key] = worker
            if self._active() > self.max_pods:
                worker.reject("OutOfpods", f"Pod Node didn't have enough resource: pods, requested: 1, "
                                           f"used: {self._active() - 1}, capacity: {self.max_pods}")
                self.counts["rejected"] += 1
            else:
                worker.start()
            return None
        worker.record.obj = obj
        if self._drifted(worker, obj):
            self._written.pop(key, None)  # what we wrote is no longer what the API holds
            self.mark_dirty(key)
        return None

    def forget(self, obj: Obj) -> None:
        """DELETED Pod (or no longer bound here): stop it, CNI DEL."""
        key = pod_key(obj)
        worker = self.workers.get(key)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        if worker is not None and (not uid or worker.record.uid == uid):
            self._retire(worker, final_delete=False)

    def resync(self, objs: list[Obj]) -> None:
        """A relist: pods that are gone stop, the rest sync."""
        keep = {pod_key(o) for o in objs}
        for key, worker in list(self.workers.items()):
            if key not in keep:
                self._retire(worker, final_delete=False)
        for obj in objs:
            self.sync(obj)

    def _active(self) -> int:
        """Pods that count against ``max_pods`` (kubelet admission: not terminated ones)."""
        return sum(1 for w in self.workers.values()
                   if w.record.rejected is None and not w.record.deleting and w.record.phase() not in TERMINAL)

    def _retire(self, worker: PodWorker, *, final_delete: bool) -> None:
        if worker.record.deleting:
            return
        worker.record.deleting = True
        if self.workers.get(worker.record.key) is worker:
            del self.workers[worker.record.key]
        self._dirty.pop(worker.record.key, None)
        self._written.pop(worker.record.key, None)

        async def retire() -> None:
            await worker.stop(release=True)
            if final_delete:
                try:
                    await self.api.delete_pod(worker.record.namespace, worker.record.name, worker.record.uid)
                    self.counts["final_deletes"] += 1
                except Exception as exc:  # gone already, or the API is away: the API's problem now
                    log.info("final delete of %s: %s", worker.record.key, exc)

        task = asyncio.ensure_future(retire())
        worker.retiring = task
        key = worker.record.key
        self._retiring[key] = task
        task.add_done_callback(lambda t: self._retiring.pop(key, None) if self._retiring.get(key) is t else None)

    def _drifted(self, worker: PodWorker, obj: Obj) -> bool:
        """Someone else changed what we own (the node lifecycle controller marked the pod not
        ready while the node was cut off): write ours again (the status manager's resync)."""
        written = self._written.get(worker.record.key)
        if written is None:
            return False
        status = obj.get("status") or {}

        def ready(conds: Any) -> Any:
            return next((c.get("status") for c in conds or () if isinstance(c, dict) and c.get("type") == "Ready"),
                        None)

        return bool(ready(status.get("conditions")) != ready(written.get("conditions")) or
                    status.get("podIP") != written.get("podIP") or status.get("phase") != written.get("phase"))

    # -- status writes --

    def mark_dirty(self, key: str) -> None:
        if key in self.workers:
            self._dirty[key] = None
            self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            if not self._dirty:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._dirty))
            del self._dirty[key]
            worker = self.workers.get(key)
            if worker is None:
                continue
            record = worker.record
            status = record.status(self.wall())
            if self._written.get(key) == status:
                continue
            try:
                await self.api.patch_status(record.namespace, record.name, status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counts["status_failures"] += 1
                log.info("status of %s: %s", key, exc)
                if getattr(exc, "status", None) == 404:
                    continue  # the pod is gone; its DELETED event stops the worker
                await asyncio.sleep(STATUS_RETRY)
                self.mark_dirty(key)
                continue
            self.counts["status_writes"] += 1
            if self.workers.get(key) is worker:
                self._written[key] = status

    # -- exec --

    async def exec(self, namespace: str, name: str, argv: list[str], stdin: str = "",
                   container: str = "") -> tuple[int, str, str]:
        """``kubectl exec``: a tool (agents/vm/tools.py) inside the pod's network namespace."""
        from agents.vm.tools import run_tool

        worker = self.workers.get(f"{namespace}/{name}")
        if worker is None:
            raise LookupError(f'pods "{name}" not found on node {self.node_name}')
        if container and worker.record.container(container) is None:
            raise LookupError(f'container {container} is not valid for pod {name}')
        if worker.net is None or worker.record.phase() not in ("Running",):
            raise RuntimeError(f"cannot exec into a container in a completed pod; current phase is "
                               f"{worker.record.phase()}" if worker.record.phase() in TERMINAL else
                               f"unable to upgrade connection: container not found (\"{container or name}\")")
        return await run_tool(worker.net, argv, stdin=stdin)

    def stats(self) -> dict[str, Any]:
        return {"pods": {k: w.stats() for k, w in self.workers.items()}, "images": sorted(self.images),
                "dirty": len(self._dirty), **self.counts}


class PodWorker:
    """One pod: its sandbox (network namespace), containers, probes and restarts."""

    def __init__(self, manager: PodManager, obj: Obj) -> None:
        self.manager = manager
        self.record = PodRecord(obj, node_ip=manager.node_ip, node_os=manager.node_os, now=manager.wall())
        self.net: Any = None
        self.podnet: Any = None
        self.apps: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.retiring: asyncio.Task[None] | None = None
        self.ready_at: float | None = None
        self._main: asyncio.Task[None] | None = None
        self._stopped = False

    # -- helpers --

    @property
    def key(self) -> str:
        return self.record.key

    def _event(self, etype: str, reason: str, message: str, container: str = "") -> None:
        field = f"spec.containers{{{container}}}" if container else ""
        try:
            self.manager.api.event(self.record.obj, etype, reason, message, field)
        except Exception:  # best effort, as the kubelet's recorder
            log.debug("event %s for %s failed", reason, self.key, exc_info=True)

    def _dirty(self) -> None:
        self.manager.mark_dirty(self.key)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pod %s: task failed", self.key, exc_info=task.exception())

    def _sleep(self, unscaled: float) -> Awaitable[None]:
        return asyncio.sleep(self.manager.timers.scaled(unscaled))

    # -- life cycle --

    def start(self) -> None:
        self._main = self._spawn(self._run())

    def reject(self, reason: str, message: str) -> None:
        """Admission refused the pod (``OutOfpods``): Failed at once, nothing runs."""
        self.record.rejected = (reason, message)
        self._event("Warning", reason, message)
        self._dirty()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self.manager.counts["pods_started"] += 1
        self._dirty()
        old = self.manager._retiring.get(self.key)
        if old is not None:  # a namesake is still going: its CNI DEL comes before our ADD
            await asyncio.wait({old})  # (not cancelled with us; its outcome is its own)
        if not await self._sandbox():
            return
        self._dirty()
        for c in self.record.containers:
            await self._start_container(c)
        self._dirty()
        self._check_ready(loop.time())

    async def _sandbox(self) -> bool:
        """CNI ADD, retried (``FailedCreatePodSandBox``) until it works or the pod goes."""
        m = self.manager
        if self.record.host_network:
            self.net = m.node_net
            self.record.ips = [m.node_ip]
            return True
        from .netapi import PodNetAPI

        while not self._stopped:
            try:
                if m.cni_prepare is not None:
                    await m.cni_prepare(self.key)
                podnet = m.datapath.add_pod(self.key, m.node_os)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                m.counts["cni_failures"] += 1
                plugin = getattr(getattr(m.datapath, "plugin", None), "name", "cni")
                sandbox = secrets.token_hex(32)
                self._event("Warning", "FailedCreatePodSandBox",
                            f"Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup "
                            f'network for sandbox "{sandbox}": plugin type="{plugin}" failed (add): {exc}')
                await self._sleep(SANDBOX_RETRY)
                continue
            m.counts["cni_add"] += 1
            self.podnet = podnet
            conf = pod_resolv_conf(self.record.spec, self.record.namespace, m.node_dns)
            self.net = PodNetAPI(m.node_net, podnet, resolv_conf=conf, name=self.key)
            self.record.ips = list(podnet.ips)
            return True
        return False

    async def stop(self, *, release: bool) -> None:
        """SIGTERM to every app, then CNI DEL (``release``: the address goes back)."""
        if self._stopped:
            return
        self._stopped = True
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        for name, app in list(self.apps.items()):
            self._event("Normal", "Killing", f"Stopping container {name}", name)
            try:
                await asyncio.wait_for(app.stop(), STOP_TIMEOUT)
            except Exception:
                log.debug("stopping %s/%s", self.key, name, exc_info=True)
        self.apps.clear()
        m = self.manager
        m.counts["pods_stopped"] += 1
        if release and self.podnet is not None:
            try:
                m.datapath.remove_pod(self.key, asyncio.get_running_loop().time())
                m.counts["cni_del"] += 1
            except Exception:
                log.exception("CNI DEL of %s failed", self.key)
            self.podnet = None

    # -- containers --

    async def _start_container(self, c: Container) -> None:
        if self._stopped:
            return
        if c.error is not None:
            self._spawn(self._pull_loop(c))
            return
        assert c.plan is not None
        self._pull(c)
        await self._launch(c)

    def _pull(self, c: Container) -> None:
        """The image pull's Events, by ``imagePullPolicy`` (the pull itself is instant)."""
        assert c.plan is not None
        m = self.manager
        ref = str(c.plan.ref)
        policy = pull_policy(c.spec)
        if policy != "Always" and ref in m.images:
            self._event("Normal", "Pulled", f'Container image "{c.image}" already present on machine', c.name)
            return
        self._event("Normal", "Pulling", f'Pulling image "{c.image}"', c.name)
        m.images.add(ref)
        self._event("Normal", "Pulled", f'Successfully pulled image "{c.image}" in 0s (0s including waiting)',
                    c.name)

    async def _pull_loop(self, c: Container) -> None:
        """An image that cannot be pulled: ErrImagePull, then ImagePullBackOff, for ever
        (the back-off between attempts: 10 s doubling to 300 s, scaled)."""
        err = c.error
        assert err is not None
        while not self._stopped:
            c.pull_failures += 1
            for ev in err.events:
                self._event(ev.type, ev.reason, ev.message, c.name)
            c.wait(err.reason, err.message)
            self._dirty()
            if not err.backoff_reason:
                return  # InvalidImageName: the kubelet does not retry
            await self._sleep(PULL_WAIT)
            c.wait(err.backoff_reason, err.backoff_message)
            for ev in err.backoff_events:
                self._event(ev.type, ev.reason, ev.message, c.name)
            self._dirty()
            await self._sleep(pull_backoff(c.pull_failures))

    async def _launch(self, c: Container) -> None:
        from .containers import make_container_app

        assert c.plan is not None
        m = self.manager
        loop = asyncio.get_running_loop()
        kwargs = dict(m.app_kwargs(c.plan)) if m.app_kwargs is not None else {}
        app = make_container_app(self.net, c.plan, hostname=self.record.hostname, **kwargs)
        self._event("Normal", "Created", f"Created container {c.name}", c.name)
        try:
            await app.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the process died at start (a port in use in a hostNetwork pod...): exit code 1
            self._event("Warning", "Failed", f"Error: {exc}", c.name)
            c.run(m.wall())
            c.terminate(1, m.wall(), str(exc))
            self._spawn(self._after_exit(c, 1))
            return
        self._event("Normal", "Started", f"Started container {c.name}", c.name)
        for ev in c.plan.events:
            self._event(ev.type, ev.reason, ev.message, c.name)
        m.counts["container_starts"] += 1
        self.apps[c.name] = app
        c.run(m.wall())
        self._dirty()
        self._start_probes(c, loop.time())
        self._spawn(self._watch_exit(c, app))

    async def _watch_exit(self, c: Container, app: Any) -> None:
        code = await app.wait_exit()
        if self._stopped or self.apps.get(c.name) is not app:
            return
        self.apps.pop(c.name, None)
        c.terminate(code, self.manager.wall(), c.plan.exit_message if c.plan is not None else "")
        self._dirty()
        self._check_ready(asyncio.get_running_loop().time())
        await self._after_exit(c, code)

    async def _after_exit(self, c: Container, code: int) -> None:
        """restartPolicy: Always restarts, OnFailure restarts a failure, Never leaves it."""
        policy = self.record.restart_policy
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            self._dirty()
            return
        ran = c.finished_at - c.started_at
        restarts = 0 if ran >= self.manager.timers.scaled(CRASH_BACKOFF_RESET) else c.restart_count + 1
        delay = crash_backoff(restarts)
        c.crash_loop(delay, self.record.label)
        self._event("Warning", "BackOff", f"Back-off restarting failed container {c.name} in pod "
                                          f"{self.record.label}", c.name)
        self._dirty()
        await self._sleep(delay)
        if self._stopped:
            return
        c.restarting()
        self.manager.counts["container_restarts"] += 1
        self._pull(c)
        await self._launch(c)

    async def _restart(self, c: Container, why: str) -> None:
        """A failed liveness / startup probe: kill the container; it comes back by restartPolicy."""
        app = self.apps.pop(c.name, None)
        self._event("Normal", "Killing", f"Container {c.name} {why}, will be restarted", c.name)
        if app is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(app.stop(), STOP_TIMEOUT)
        c.terminate(137, self.manager.wall())
        self._dirty()
        self._check_ready(asyncio.get_running_loop().time())
        await self._after_exit(c, 137)

    # -- probes --

    def _start_probes(self, c: Container, now: float) -> None:
        try:
            specs = probes_of(c.spec)
        except ProbeError as exc:  # the API server would have refused it; run without
            log.warning("pod %s container %s: %s", self.key, c.name, exc)
            specs = {}
        if not specs:
            return
        started = asyncio.Event()
        if "startup" not in specs:
            started.set()
        for kind, spec in specs.items():
            probe = Probe(spec, self.manager.timers)
            self._spawn(self._probe_loop(c, kind, probe, started, now))

    async def _probe_loop(self, c: Container, kind: str, probe: Probe, started: asyncio.Event, now: float) -> None:
        from .containers import probe_attempt

        loop = asyncio.get_running_loop()
        m = self.manager
        generation = c.container_id
        if kind != "startup":
            await started.wait()
            now = loop.time()
        probe.start(now)
        while not self._stopped and c.container_id == generation and c.state == "running":
            deadline = probe.next_deadline()
            if deadline is None:
                return
            await asyncio.sleep(max(deadline - loop.time(), 0.0))
            if c.container_id != generation or c.state != "running":
                return
            if not probe.due(loop.time()):
                continue
            # The attempt's timeout is not scaled: it waits on the network and the app, which
            # run in real time (link delays and the transport are never scaled, agents/timers.py).
            ok, detail = await probe_attempt(m.node_net, probe.action, self.record.ips[0] if self.record.ips
                                             else m.node_ip, max(probe.timeout, probe.spec.timeout))
            m.counts["probe_attempts"] += 1
            if c.container_id != generation or c.state != "running":
                return
            if ok is False:
                m.counts["probe_failures"] += 1
                reason, message = failure_event(kind, detail)
                self._event("Warning", reason, message, c.name)
            changed = probe.result(ok, loop.time())
            if kind == "startup" and probe.ready and not started.is_set():
                c.started = True
                c.ready = not c.has_readiness
                started.set()
                self._dirty()
                self._check_ready(loop.time())
            elif kind == "readiness" and changed:
                c.ready = probe.ready
                self._dirty()
                self._check_ready(loop.time())
            if probe.failed:
                why = "failed liveness probe" if kind == "liveness" else "failed startup probe"
                self._spawn(self._restart(c, why))
                return

    def _check_ready(self, now: float) -> None:
        if self.record.ready:
            if self.ready_at is None:
                self.ready_at = now
        else:
            self.ready_at = None

    # -- introspection --

    def stats(self) -> dict[str, Any]:
        r = self.record
        return {"uid": r.uid, "ips": list(r.ips), "phase": r.phase(), "ready": r.ready,
                "containers": {c.name: {"state": c.state, "reason": c.reason, "ready": c.ready,
                                        "restarts": c.restart_count} for c in r.containers},
                "apps": {name: app.stats() for name, app in self.apps.items()},
                "veth": getattr(self.podnet, "veth_name", None)}
