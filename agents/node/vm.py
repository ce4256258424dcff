"""The ``node`` VM kind: a worker node — kubelet, CNI datapath, kube-proxy and the pods.

Config keys (docs/contracts-control-plane.md): ``cluster``, ``pool``, ``os`` (linux|windows),
``apiserver``, ``max_pods``, ``time_scale``; optional ``vm_size``, ``network_plugin``
(``calico`` | ``flannel``, default calico: the cluster's ``primaryNetworkPlugin``),
``kube_proxy_mode`` (``iptables`` | ``ipvs``, default iptables), ``ipvs_scheduler`` (``rr`` | ``lc``,
default rr), ``cluster_cidrs`` (the pod network of each IP family, IPv4 first; a dual-stack
Calico cluster adds ``fd00:10:244::/56``: Linux pods get an IPv6 address too, Windows pods
IPv4 only; default ``[10.244.0.0/16]``).
Windows nodes run the same agents with ``kubernetes.io/os: windows`` and the Windows
nodeInfo (on the real product the CNI runs as a Windows service; the datapath is the same).

Bring-up, after the kubelet registered its Node (docs/contracts-pod-network.md):

1. a Node informer; Flannel waits for this Node's ``spec.podCIDR`` (the API server's node
   IPAM); Calico reads the shared block IPAM (:class:`~.kubelet.CalicoIpamSync`, a ConfigMap)
   and claims a block for the VTEP; the blocks of a deleted Node go back to the pool, released
   once, by the first Ready node (:mod:`.ipamgc`);
2. the CNI plugin and the :class:`~.datapath.NodeDatapath` around the VM's root stack, which
   the runtime then drives (:class:`~.netapi.DatapathStack`); routes to the other nodes'
   pod networks follow the Node objects (and, for Calico, the block affinities);
3. kube-proxy (:class:`agents.kubeproxy.Proxier`) in the root stack's hooks, fed Services
   and EndpointSlices; network programming latency from each watch event's ``committedAt``;
   its ``healthCheckNodePort`` listeners follow the Services (:mod:`.healthcheck`);
4. the pods bound to this node (``fieldSelector=spec.nodeName=<node>``) run through
   :class:`~.pods.PodManager`; CoreDNS pods serve the cluster zone fed from the same watches.

Management verbs beside the plain VM's: ``kubelet`` (registration and heartbeats), ``pods``
(the pod workers), ``datapath`` (CNI, VXLAN, masquerade, kube-proxy), ``pod_exec
{namespace, name, argv, input?, container?}`` -> ``{rc, stdout, stderr}``: a tool
(``ping``, ``curl``, ``nc``, ``nslookup``...) run inside the pod's network namespace,
``cni_masquerade {exceptions?}`` (the CNI's masquerade exceptions, read or replaced),
``pod_probe {namespace, name, targets, timeout?}`` (real connections from a pod, all at once:
:mod:`.probe`, ``hcinet probe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

from agents import mgmt
from agents.kube.client import Informer, KubeClient
from agents.mgmt import MgmtError
from agents.timers import Timers
from agents.vm.runtime import VM, ConfigError, VMConfig, register_kind

from .kubelet import (
    CALICO_IPAM_CONFIGMAP,
    CALICO_IPAM_NAMESPACE,
    CalicoIpamSync,
    Kubelet,
    KubeletConfig,
    KubeletConfigError,
    KubePodApi,
    client_timeout,
    user_agent,
)
from .netapi import DatapathStack

log = logging.getLogger("hcinet.node")

PLUGINS = ("calico", "flannel")
PROXY_MODES = ("iptables", "ipvs")
IPVS_SCHEDULERS = ("rr", "lc")
CLUSTER_DNS = ("10.96.0.10",)
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
STATUS_WRITERS = 2


class StampedInformer(Informer):
    """An Informer that keeps the ``committedAt`` of the event being handled (the API
    server's commit time, docs/contracts-pod-network.md) for kube-proxy's latency."""

    committed_at: float | None = None

    def _apply(self, event: dict[str, Any]) -> None:
        at = event.get("committedAt")
        self.committed_at = float(at) if isinstance(at, int | float) else None
        try:
            super()._apply(event)
        finally:
            self.committed_at = None


@register_kind("node")
class NodeVM(VM):
    def __init__(self, config: VMConfig) -> None:
        super().__init__(config)
        self.kubelet_config: KubeletConfig | None = None
        self.kubelet: Kubelet | None = None
        self.dstack: DatapathStack | None = None
        self.datapath: Any = None
        self.plugin: Any = None
        self.ipam: CalicoIpamSync | None = None
        self.ipam_gc: Any = None  # Calico: deleted Nodes' blocks released (ipamgc.py)
        self.proxier: Any = None
        self.felix: Any = None  # Calico: network policy (felix.py); None on Flannel
        self.host_guard: Any = None  # Calico: the node's own traffic under its HostEndpoint
        self.health: Any = None  # kube-proxy's healthCheckNodePort listeners (healthcheck.py)
        self.pods: Any = None
        self.pod_api: KubePodApi | None = None
        self.network_plugin = "calico"
        self.proxy_mode = "iptables"
        self.ipvs_scheduler = "rr"
        self.cluster_cidrs = [DEFAULT_CLUSTER_CIDR]
        self.network_error = ""
        self.network_ready = asyncio.Event()
        self._clients: list[Any] = []
        self._informers: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    # -- config and stack --

    async def start(self) -> str:
        # Validated here, not in __init__: a bad key becomes the readiness line's error.
        try:
            self.kubelet_config = KubeletConfig.parse(self.config.name, self.config.raw)
        except KubeletConfigError as exc:
            raise ConfigError(str(exc)) from None
        raw = self.config.raw
        self.network_plugin = str(raw.get("network_plugin") or "calico")
        if self.network_plugin not in PLUGINS:
            raise ConfigError(f"network_plugin: expected calico or flannel, got {self.network_plugin!r}")
        self.proxy_mode = str(raw.get("kube_proxy_mode") or "iptables")
        if self.proxy_mode not in PROXY_MODES:
            raise ConfigError(f"kube_proxy_mode: expected iptables or ipvs, got {self.proxy_mode!r}")
        self.ipvs_scheduler = str(raw.get("ipvs_scheduler") or "rr")
        if self.ipvs_scheduler not in IPVS_SCHEDULERS:
            raise ConfigError(f"ipvs_scheduler: expected rr or lc, got {self.ipvs_scheduler!r}")
        cidrs = raw.get("cluster_cidrs") or [DEFAULT_CLUSTER_CIDR]
        try:
            nets = [ipaddress.ip_network(c) for c in cidrs] if isinstance(cidrs, list) else []
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cluster_cidrs: {exc}") from None
        if not nets or [n.version for n in nets] not in ([4], [4, 6]):
            raise ConfigError(f"cluster_cidrs: expected [IPv4 CIDR] or [IPv4 CIDR, IPv6 CIDR], got {cidrs!r}")
        if len(nets) > 1 and self.network_plugin != "calico":
            raise ConfigError(f"cluster_cidrs: {self.network_plugin} does not support IPv6 ({nets[1]})")
        self.cluster_cidrs = [str(n) for n in nets]
        return await super().start()

    def build_stack(self) -> Any:
        """The root stack, wrapped so the datapath can take it over once the CNI is set up."""
        self.dstack = DatapathStack(super().build_stack(), asyncio.get_running_loop().time)
        return self.dstack

    def node_ip(self) -> str:
        """The first address of the first NIC (static, or leased over DHCP)."""
        for ips in self._claimed.values():
            if ips:
                return ips[0]
        for nic in self.config.nics:
            if nic.ips:
                return nic.ips[0]
        return ""

    def node_subnet(self, ip: str) -> str | None:
        """The prefix of eth0 that holds the node's address (static or leased)."""
        assert self.dstack is not None
        iface = self.dstack.root.interfaces.get(0)
        addr = ipaddress.ip_address(ip)
        for net in getattr(iface, "networks", ()):
            if addr in net:
                return str(net)
        return None

    # -- services --

    def _client(self, cfg: KubeletConfig, timeout: float | None = None) -> Any:
        client = KubeClient(self, cfg.apiserver_host, cfg.apiserver_port,
                            timeout=timeout or client_timeout(Timers(cfg.time_scale)), user_agent=user_agent(cfg.os))
        self._clients.append(client)
        return client

    async def start_services(self) -> None:
        await super().start_services()
        cfg = self.kubelet_config
        assert cfg is not None
        self.kubelet = Kubelet(cfg, self._client(cfg), self.node_ip)
        self.kubelet.start()
        self._tasks.append(asyncio.ensure_future(self._network_main()))

    async def stop_services(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        if self.health is not None:
            await self.health.close()
        if self.ipam_gc is not None:
            await self.ipam_gc.close()
        if self.pods is not None:
            await self.pods.close()
        for informer in self._informers.values():
            await informer.stop()
        self._informers.clear()
        if self.pod_api is not None:
            await self.pod_api.close()
        if self.kubelet is not None:
            await self.kubelet.stop()
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        await super().stop_services()

    async def _network_main(self) -> None:
        try:
            await self._bring_up_network()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.network_error = f"{type(exc).__name__}: {exc}"
            log.exception("node %s: pod networking failed to come up", self.name)

    async def _bring_up_network(self) -> None:
        from agents.cni import create_cni

        cfg = self.kubelet_config
        kubelet = self.kubelet
        assert cfg is not None and kubelet is not None and self.dstack is not None
        await kubelet.registered.wait()
        timers = Timers(cfg.time_scale)
        client = self._client(cfg, timeout=max(2.0, client_timeout(timers)))
        node_ip = self.node_ip()
        nodes_changed = asyncio.Event()
        nodes = self._informer("nodes", client, "/api/v1/nodes",
                               on_add=lambda *_: self._nodes_changed(nodes_changed),
                               on_update=lambda *_: self._nodes_changed(nodes_changed),
                               on_delete=lambda obj: self._node_deleted(obj, nodes_changed))
        await nodes.wait_synced()
        kwargs: dict[str, Any] = {"node_name": cfg.node, "node_ip": node_ip,
                                  "node_subnet": self.node_subnet(node_ip), "os": cfg.os,
                                  "cluster_cidr": self.cluster_cidrs[0]}
        if self.network_plugin == "flannel":
            kwargs["pod_cidr"] = await self._wait_pod_cidr(nodes, nodes_changed, cfg.node)
        else:
            from agents.cni import BlockAllocator

            self.ipam = CalicoIpamSync(client, cfg.node, windows=cfg.os == "windows",
                                       allocator=BlockAllocator(self.cluster_cidrs))
            self._informer("ipam", client, f"/api/v1/namespaces/{CALICO_IPAM_NAMESPACE}/configmaps",
                           field_selector=f"metadata.name={CALICO_IPAM_CONFIGMAP}",
                           on_add=self._ipam_changed, on_update=lambda _old, new: self._ipam_changed(new),
                           on_delete=lambda _obj: self._ipam_changed(None))
            await self.ipam.ensure_capacity(1)  # the VTEP's address (or a Windows node's block)
            from .ipamgc import CalicoIpamGc  # a deleted Node's blocks back to the pool, once

            self.ipam_gc = CalicoIpamGc(self.ipam, nodes.items, timers)
            self._tasks.append(asyncio.ensure_future(self.ipam_gc.run()))
            kwargs["allocator"] = self.ipam.allocator
        from .datapath import NodeDatapath

        self.plugin = create_cni(self.network_plugin, **kwargs)
        self.datapath = NodeDatapath(self.dstack.root, self.plugin, node_ip)
        self.dstack.attach(self.datapath)
        self._sync_remote_nodes()
        self._start_kube_proxy(client, cfg, timers, node_ip)
        self._start_felix(client, cfg, node_ip)
        self._start_pods(client, cfg, timers, node_ip)
        self.network_ready.set()
        self._stack().kick()
        log.info("node %s: %s datapath up (VTEP %s), kube-proxy %s", cfg.node, self.network_plugin,
                 self.datapath.vtep_address, self.proxy_mode)

    def _informer(self, name: str, client: Any, path: str, **kwargs: Any) -> Any:
        informer = StampedInformer(client, path, **kwargs)
        self._informers[name] = informer
        informer.start()
        return informer

    async def _wait_pod_cidr(self, nodes: Any, changed: asyncio.Event, me: str) -> str:
        """Flannel's kube subnet manager waits for the Node's ``spec.podCIDR``."""
        while True:
            node = nodes.get(me) or {}
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr:
                if self.kubelet is not None:
                    self.kubelet.pod_cidr = str(cidr)
                return str(cidr)
            changed.clear()
            await changed.wait()

    def _node_deleted(self, obj: Any, event: asyncio.Event) -> None:
        if self.ipam_gc is not None:
            self.ipam_gc.node_deleted(obj)
        self._nodes_changed(event)

    def _nodes_changed(self, event: asyncio.Event) -> None:
        event.set()
        self._sync_remote_nodes()

    def _ipam_changed(self, obj: Any) -> None:
        if self.ipam is not None:
            self.ipam.apply(obj)
            self._sync_remote_nodes()

    def _sync_remote_nodes(self) -> None:
        """Routes to every other node's pod networks, from the Node objects (and blocks)."""
        informer = self._informers.get("nodes")
        if self.datapath is None or informer is None:
            return
        try:
            self.datapath.set_remote_nodes(self.plugin.remote_nodes(informer.items()))
        except Exception:
            log.exception("node %s: routes to the other nodes", self.name)
        self._stack().kick()

    # -- kube-proxy --

    def _start_kube_proxy(self, client: Any, cfg: KubeletConfig, timers: Timers, node_ip: str) -> None:
        from agents.kubeproxy import Proxier

        assert self.dstack is not None
        self.proxier = Proxier(cfg.node, [node_ip], self.proxy_mode, self.ipvs_scheduler, timers=timers,
                               cluster_cidrs=self.cluster_cidrs)
        root = self.dstack.root
        self.proxier.install(root)
        # Replies of masqueraded flows are un-NATed before any rule sees them (conntrack's
        # reverse mapping comes before the nat table's PREROUTING chains), so the CNI's
        # un-NAT stays first.
        prerouting = root.hooks["PREROUTING"]
        unnat = self.datapath.masquerade.prerouting
        if unnat in prerouting:
            prerouting.remove(unnat)
            prerouting.insert(0, unnat)
        self.dstack.add_timed(self.proxier)
        from .healthcheck import ServiceHealthServers

        self.health = ServiceHealthServers(self._stack(), self.proxier)
        self._informer("services", client, "/api/v1/services",
                       on_add=lambda obj: self._service(obj, "Service"),
                       on_update=lambda _old, obj: self._service(obj, "Service"),
                       on_delete=lambda obj: self._service(obj, "Service", deleted=True))
        self._informer("endpointslices", client, "/apis/discovery.k8s.io/v1/endpointslices",
                       on_add=lambda obj: self._service(obj, "EndpointSlice"),
                       on_update=lambda _old, obj: self._service(obj, "EndpointSlice"),
                       on_delete=lambda obj: self._service(obj, "EndpointSlice", deleted=True))

    def _service(self, obj: dict[str, Any], kind: str, *, deleted: bool = False) -> None:
        """A Service or EndpointSlice changed: kube-proxy's rules (in force on return, which
        is the programming latency's end)."""
        informer = self._informers["services" if kind == "Service" else "endpointslices"]
        committed = informer.committed_at
        loop_now = asyncio.get_running_loop().time()
        # committedAt is a perf_counter() value; kube-proxy is given loop-clock times, so the
        # commit is moved onto that clock: applied - committed stays perf_counter-exact.
        at = None if committed is None else committed + (loop_now - time.perf_counter())
        proxier = self.proxier
        if kind == "Service":
            (proxier.delete_service if deleted else proxier.update_service)(obj, at, loop_now)
        else:
            (proxier.delete_slice if deleted else proxier.update_slice)(obj, at, loop_now)
        self.health.sync()  # the healthCheckNodePort listeners follow the Services
        self._stack().kick()

    # -- Felix (network policy, Calico only) --

    def _start_felix(self, client: Any, cfg: KubeletConfig, node_ip: str) -> None:
        """Calico: Felix's watches feed the policy engine; its enforcer is the datapath's
        ``policy`` hook and its conntrack expiry rides the datapath stack's timer."""
        if self.network_plugin != "calico":
            return
        from .felix import WATCHES, Felix

        assert self.dstack is not None
        local = [ip for ip in (node_ip, self.datapath.vtep_address) if ip]
        felix = self.felix = Felix(cfg.node, local_ips=local, clock=time.perf_counter,
                                   forwarded_snat=self._kube_proxy_snat)
        assert felix.enforcer is not None
        self.datapath.policy = felix.enforcer.hook
        # the node's own traffic under its HostEndpoint's policy: hooked in while one exists
        from .felix import HostEndpointGuard

        self.host_guard = HostEndpointGuard(felix, lambda ip: self.datapath.pod_by_ip(ip) is not None,
                                            self.dstack.root.hooks)
        self.dstack.add_timed(felix)
        for name, path, kind in WATCHES:
            self._informer(name, client, path,
                           on_add=lambda obj, n=name, k=kind: self._felix_event(n, k, obj),
                           on_update=lambda _old, obj, n=name, k=kind: self._felix_event(n, k, obj),
                           on_delete=lambda obj, n=name, k=kind: self._felix_event(n, k, obj, deleted=True))

    def _kube_proxy_snat(self, pkt: tuple[Any, ...]) -> bool:
        """Is ``pkt`` (node address -> local pod) a forwarded flow kube-proxy SNATed to this
        node (externalTrafficPolicy: Cluster, hairpin), rather than the node's own traffic?
        Its reply tuple is in kube-proxy's conntrack with the SNAT."""
        from agents.kubeproxy.conntrack import REPLY

        ent = self.proxier.conntrack.table.get((pkt[2], pkt[1], pkt[5], pkt[0], pkt[4])) if self.proxier else None
        return ent is not None and ent[1] == REPLY and bool(ent[0].snat)

    def _felix_event(self, informer: str, kind: str, obj: Any, *, deleted: bool = False) -> None:
        self.felix.handle(kind, obj, deleted=deleted, committed_at=self._informers[informer].committed_at)
        self._stack().kick()  # the enforcer's next deadline may have moved

    # -- pods --

    def _start_pods(self, client: Any, cfg: KubeletConfig, timers: Timers, node_ip: str) -> None:
        from agents.dns.resolver import resolv_conf_of

        from .pods import PodManager

        api = self.pod_api = KubePodApi([self._client(cfg) for _ in range(STATUS_WRITERS)], self._client(cfg),
                                        cfg.node, time_scale=cfg.time_scale)
        api.start()
        self.pods = PodManager(node_name=cfg.node, node_ip=node_ip, node_os=cfg.os, datapath=self.datapath,
                               node_net=self._stack(), api=api, timers=timers, max_pods=cfg.max_pods,
                               node_dns=resolv_conf_of(self), app_kwargs=self._app_kwargs,
                               status_writers=STATUS_WRITERS,
                               cni_prepare=self._cni_prepare if self.ipam is not None else None)
        self.pods.start()
        pods = self.pods
        self._informer("pods", client, "/api/v1/pods", field_selector=f"spec.nodeName={cfg.node}",
                       on_add=pods.sync, on_update=lambda _old, obj: pods.sync(obj), on_delete=pods.forget)

    async def _cni_prepare(self, key: str) -> None:
        """Calico: a free address in this node's blocks before CNI ADD (a block claimed
        through the API server when they are full)."""
        if self.ipam is not None:
            await self.ipam.ensure_capacity(1)

    def _app_kwargs(self, plan: Any) -> dict[str, Any]:
        """A coredns container runs CoreDNS's kubernetes plugin (agents/dns/coredns.py): its own
        watches through the API VIP, DNS served on the pod's address, the rest forwarded to
        the node's resolvers (the network's dnsServers).

        Its API watches and upstream queries leave from the node's address (``egress``): the
        control-plane VM and the datacenter DNS sit on the node subnet, which Flannel's
        masquerade exceptions leave un-NATed, and neither has a route back to the pod
        network here (on the product the control plane is itself a cluster node).
        """
        if plan.app != "coredns":
            return {}
        from functools import partial

        from agents.dns.coredns import STARTUP_TIMEOUT, coredns_dns_factory
        from agents.dns.resolver import resolv_conf_of

        cfg = self.kubelet_config
        assert cfg is not None
        upstream = [ip for ip in resolv_conf_of(self).nameservers if ip not in CLUSTER_DNS]
        return {"dns": partial(coredns_dns_factory, kube=f"{cfg.apiserver_host}:{cfg.apiserver_port}",
                               upstream=upstream, egress=self,
                               startup_timeout=Timers(cfg.time_scale).scaled(STARTUP_TIMEOUT))}

    # -- management --

    def mgmt_handlers(self) -> dict[str, Any]:
        return {**super().mgmt_handlers(), "kubelet": self._m_kubelet, "pods": self._m_pods,
                "datapath": self._m_datapath, "pod_exec": self._m_pod_exec,
                "cni_masquerade": self._m_cni_masquerade, "policy": self._m_policy, "pod_probe": self._m_pod_probe}

    def _m_kubelet(self, args: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.kubelet.stats() if self.kubelet is not None else {"registered": False}
        out["network_ready"] = self.network_ready.is_set()
        if self.network_error:
            out["network_error"] = self.network_error
        return out

    def _m_pods(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.pods is None:
            return {"pods": {}, "network_ready": False, "network_error": self.network_error}
        out: dict[str, Any] = self.pods.stats()
        if self.pod_api is not None:
            out["api"] = dict(self.pod_api.counts)
        return out

    def _m_datapath(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.datapath is None:
            return {"ready": False, "plugin": self.network_plugin, "error": self.network_error}
        out: dict[str, Any] = {"ready": True, **self.datapath.stats()}
        out.pop("root", None)
        if self.proxier is not None:
            out["kube_proxy"] = self.proxier.stats()
            if self.health is not None:
                out["kube_proxy"]["health_check"] = self.health.stats()
            if args.get("latency_samples"):  # the window's per-change samples, oldest first (benchmarks)
                out["kube_proxy"]["programming_latency_samples_ms"] = self.proxier.latency.samples()
        if self.ipam is not None:
            out["ipam"] = self.ipam.stats()
            out["ipam"]["block_usage"] = self.ipam.allocator.stats()  # per block: calicoctl ipam show
            if self.ipam_gc is not None:
                out["ipam"]["gc"] = self.ipam_gc.stats()
        return out

    def _m_policy(self, args: dict[str, Any]) -> dict[str, Any]:
        """``policy {latency_samples?}``: Felix's engine and enforcer stats, each local pod's
        ordered policies, the datapath's ``policy_drops``; Flannel says it does not enforce."""
        if self.network_plugin == "flannel":
            from .felix import FLANNEL_VERB

            return dict(FLANNEL_VERB)
        if self.felix is None or self.datapath is None:
            return {"enforcing": False, "ready": False, "error": self.network_error}
        out: dict[str, Any] = self.felix.stats(list(self.datapath.pods),
                                               latency_samples=bool(args.get("latency_samples")))
        out["ready"] = True
        out["policy_drops"] = self.datapath.counters["policy_drops"]
        if self.host_guard is not None:
            out["host_endpoint"] = {"key": self.host_guard.key,
                                    "present": self.host_guard.attached,
                                    **self.host_guard.counters}
        return out

    def _m_cni_masquerade(self, args: dict[str, Any]) -> dict[str, Any]:
        """``cni_masquerade {exceptions?}`` -> ``{sources, exceptions}``: the CNI's masquerade
        settings; ``exceptions`` (prefixes) replaces the exception list first.  The setting
        that decides the pod -> VM outcome (docs/contracts-pod-network.md): flows already
        NATed keep their mapping until they expire, as conntrack entries do."""
        if self.datapath is None:
            raise MgmtError(f"cni_masquerade: node {self.name} has no pod network yet"
                            + (f" ({self.network_error})" if self.network_error else ""))
        if "exceptions" in args:
            raw = args["exceptions"]
            if not isinstance(raw, list | tuple) or not all(isinstance(p, str) for p in raw):
                raise MgmtError("exceptions: expected a list of prefixes such as 172.16.0.0/24")
            try:
                prefixes = [str(ipaddress.ip_network(p, strict=False)) for p in raw]
            except ValueError as exc:
                raise MgmtError(f"exceptions: {exc}") from None
            self.plugin.masquerade_exceptions = prefixes
            self.datapath.masquerade.set_exceptions(prefixes)
            log.info("node %s: masquerade exceptions now %s", self.name, prefixes)
        return {"sources": list(self.plugin.masquerade_sources),
                "exceptions": list(self.plugin.masquerade_exceptions)}

    async def _m_pod_exec(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace = mgmt.require(args, "namespace", str) if "namespace" in args else "default"
        name = mgmt.require(args, "name", str)
        argv = list(mgmt.require(args, "argv", (list, tuple)))
        if not argv or not all(isinstance(a, str) for a in argv):
            raise MgmtError("argv: expected a non-empty list of strings")
        stdin = args.get("input", "")
        container = args.get("container", "")
        if not isinstance(stdin, str) or not isinstance(container, str):
            raise MgmtError("input, container: expected strings")
        if self.pods is None:
            raise MgmtError(f"pods: node {self.name} has no pod network yet"
                            + (f" ({self.network_error})" if self.network_error else ""))
        try:
            rc, out, err = await self.pods.exec(namespace, name, argv, stdin, container)
        except (LookupError, RuntimeError) as exc:
            raise MgmtError(str(exc)) from None
        return {"rc": rc, "stdout": out, "stderr": err}

    async def _m_pod_probe(self, args: dict[str, Any]) -> dict[str, Any]:
        """``pod_probe {namespace, name, targets: [[ip, port, proto], ...], timeout?}`` ->
        ``{results: [{ip, port, protocol, allowed, reason}]}``: real connections from the pod's
        network namespace, all at once (:mod:`.probe`; ``hcinet probe``)."""
        from . import probe

        namespace = mgmt.require(args, "namespace", str) if "namespace" in args else "default"
        name = mgmt.require(args, "name", str)
        try:
            targets = probe.parse_targets(args.get("targets"))
        except probe.ProbeError as exc:
            raise MgmtError(str(exc)) from None
        cfg = self.kubelet_config
        timeout = args.get("timeout")
        if timeout is None:
            scale = cfg.time_scale if cfg is not None else 1.0
            timeout = max(probe.MIN_TIMEOUT, Timers(scale).scaled(probe.DEFAULT_TIMEOUT))
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 60:
            raise MgmtError("timeout: expected seconds within (0, 60]")
        worker = self.pods.workers.get(f"{namespace}/{name}") if self.pods is not None else None
        if worker is None:
            raise MgmtError(f'pods "{name}" not found on node {self.name}')
        if worker.net is None or worker.record.phase() != "Running":
            raise MgmtError(f"pod {namespace}/{name} is not running (phase {worker.record.phase()})")
        ips = list(getattr(worker.podnet, "ips", None) or worker.record.ips or [])
        return {"results": await probe.probe_all(worker.net, ips, targets, float(timeout)),
                "timeout": float(timeout)}

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["kubelet"] = self._m_kubelet({})
        return out
