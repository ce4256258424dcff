"""The MOC cloud agent: management verbs, VM inventory, the HA watcher and lbagent programming.

The cloud agent owns networks, IP pools, VMs and load balancers (FACTS.md, "The HAProxy VM
and MOC").  It never starts a process itself: every VM is created, stopped and restarted by
asking the host agent (the node-agent role, product port 45000) on the management plane.  It
learns of VM deaths from the host agent's event stream (a long poll of ``events {since,
wait_s}``) and, as the HCI failover cluster would, restarts a VM that died while its desired
state is ``running`` after ``Timers.ha_restart_delay``.  A VM stopped on purpose (``vm_stop``)
stays down.  It programs each cluster's HAProxy VM over the *emulated* network (the lbagent,
TCP 46000, ``PUT /v1/config``), again after every start of that VM.

Everything it decides is written to sqlite (:mod:`.store`) before it acts, so a restarted
cloud agent (the host agent restarts it: a failover-cluster role) rebuilds its pools from
the store, resumes the event stream at its saved cursor and reconciles: VMs that should run
and do not are restarted, load balancers not yet programmed are programmed.

Allocation and validation are sans-IO (:mod:`.pools`); this module only sequences them with
I/O.  Bookkeeping steps contain no ``await``, so concurrent verbs never see half a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from agents import mgmt
from agents.dns.datacenter import StaticZone, StaticZoneError
from agents.mgmt import MgmtError, RemoteError
from agents.timers import Timers

from . import lbservices as LBS
from . import pools as P
from .store import ClusterRow, LbRecord, NodePoolRow, Store, VipRow, VmRecord

log = logging.getLogger("hcinet.moc")

START_TIMEOUT = 20.0  # a VM's ready line (the host agent's start_vm timeout)
CALL_MARGIN = 10.0
EVENTS_WAIT_S = 5.0  # long poll of the host agent's events
LBAGENT_PORT = 46000  # cloud agent -> lbagent on the LB VM (FACTS.md)
LB_RETRY_MIN, LB_RETRY_MAX = 0.1, 2.0
LB_READY_WAIT = 10.0  # cluster_create: how long the nodes wait for the API server VIP to be served
HA_TRIES = 5  # failed restarts of one VM before MOC gives up (and says so in `status`)
NODE_DELETE_RETRY_MAX = 5.0  # seconds between attempts to delete a removed node's Node object
PENDING_NODE_DELETIONS = "pending_node_deletions"  # meta key: [[cluster, node], ...]
ROLES = ("apiserver", "haproxy", "node", "client")
SERVICE_LBS = "service_lbs"  # meta key: {key: {"request": ensure document, "vip": ip}}
CLOUDAGENT_PORT = 55000  # the API server VM's cloud provider reaches MOC here (emulated network)
SERVICE_PROGRAM_WAIT = 5.0  # ensure: how long to wait for the LB VM to take the new config


class HostAgentApi(Protocol):
    """What MOC needs of a management client: ``agents.mgmt.AsyncMgmtClient`` or a fake."""

    async def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any: ...


# (lb ip, lbagent document) -> raises on failure; the default speaks HTTP over the VM's stack.
LbProgrammer = Callable[[str, dict[str, Any]], Awaitable[None]]
# (API server VIP, node name) -> deletes the Node object (a 404 counts as done); raises on failure.
NodeDeleter = Callable[[str, str], Awaitable[None]]


@dataclass(slots=True)
class ClusterState:
    spec: P.ClusterSpec
    vip: str
    warnings: list[str]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _err(exc: P.PoolError) -> MgmtError:
    return MgmtError(str(exc))


class CloudAgent:
    """The cloud agent's state and verbs; ``start()`` loads the store and starts the watchers."""

    VERBS = ("status", "network_create", "network_get", "cluster_create", "cluster_get", "cluster_delete",
             "nodepool_create", "nodepool_scale", "nodepool_delete", "client_create", "vm_list", "vm_stop",
             "vm_start", "loadbalancers", "networkinterfaces", "wait_ready", "lb_ensure", "lb_delete")

    def __init__(self, *, store: Store, hostagent: HostAgentApi, timers: Timers, run_dir: str,
                 broker: str, lb_programmer: LbProgrammer | None = None,
                 broker_api: HostAgentApi | None = None, kinds: Mapping[str, str] | None = None,
                 reserved: Mapping[str, str] | None = None, node_deleter: NodeDeleter | None = None) -> None:
        self.store = store
        self.hostagent = hostagent
        self.broker_api = broker_api
        self.timers = timers
        self.run_dir = run_dir
        self.broker = broker
        self.lb_programmer = lb_programmer
        self.node_deleter = node_deleter
        self.kinds = dict(kinds or {})  # role -> VM kind to run (tests use "plain" stand-ins)
        self.reserved = dict(reserved or {})  # addresses no pool may hold (the cloud agent's own)
        self.ipam = P.Ipam()
        self.clusters: dict[str, ClusterState] = {}
        self.vms: dict[str, VmRecord] = {}
        self.lbs: dict[str, LbRecord] = {}
        self.events_seen = 0  # the host-agent event seq acted on (tests wait on it)
        self.ha_restarts = 0
        self.ha_failures: dict[str, str] = {}  # VM -> why MOC gave up restarting it
        self._restarts: dict[str, asyncio.Task[None]] = {}
        self._programming: dict[str, asyncio.Task[None]] = {}
        self._programmed: dict[str, asyncio.Event] = {}  # LB name -> set once its VIP is served
        self.service_lbs: dict[str, tuple[LBS.ServiceLb, str]] = {}  # cluster/ns/name -> (request, VIP)
        self.cloudagent_address: str | None = None  # "IP:55000" for the control-plane VMs' config
        self._tasks: set[asyncio.Task[None]] = set()
        self._hostagent_pid: int | None = None
        self.handlers: dict[str, mgmt.Handler] = {verb: getattr(self, verb) for verb in self.VERBS}

    # --- life cycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild pools and inventory from the store (no I/O beyond sqlite)."""
        for doc, segment in self.store.networks():
            spec = P.parse_network(doc, self.ipam.specs())
            self.ipam.add_network(spec, segment)
        for row in self.store.clusters():
            pools = [P.NodePoolSpec(name=p.name, os_type=p.os_type, count=p.count)
                     for p in self.store.nodepools(row.name)]
            cspec, _ = P.parse_cluster(row.spec, list(self.ipam.networks))
            self.clusters[row.name] = ClusterState(cspec.with_pools(pools), row.vip or "", list(row.warnings))
            self.ipam.restore_cluster(row.name, row.network, row.reservation)
        for vm in self.store.vms():
            self.vms[vm.name] = vm
            node = self.ipam.get(vm.network).node
            if node is not None:
                for ip in vm.ips:
                    addr = ipaddress.ip_address(ip)
                    if addr in node.range:
                        node.take(addr, vm.cluster, vm.name)
        for vip in self.store.vips():
            pool = self.ipam.get(vip.network).vip
            if pool is not None:
                pool.take(ipaddress.ip_address(vip.ip), vip.cluster, vip.holder, vip.port)
        for lb in self.store.lbs():
            self.lbs[lb.name] = lb
        for key, row in (self.store.get_meta(SERVICE_LBS, {}) or {}).items():
            try:
                svc = LBS.parse_ensure(row["request"])
                pool = self.ipam.get(self.clusters[svc.cluster].spec.vnet).vip
                if pool is not None:
                    pool.allocate_service(svc.cluster, svc.holder, [p.port for p in svc.ports],
                                          ip=ipaddress.ip_address(row["vip"]))
            except (P.PoolError, KeyError) as exc:
                log.warning("stored load balancer %s dropped: %s", key, exc)
                continue
            self.service_lbs[key] = (svc, str(row["vip"]))

    async def start(self) -> None:
        """Load state, learn which host agent this is, reconcile, start the watchers."""
        self.load()
        ping = await self.hostagent.call("ping", {}, timeout=CALL_MARGIN)
        self._hostagent_pid = int(ping.get("pid", 0)) if isinstance(ping, dict) else 0
        if self.store.get_meta("hostagent_pid") != self._hostagent_pid:
            # A different host agent numbers its events from 1 again: the old cursor means nothing.
            self.store.set_meta("hostagent_pid", self._hostagent_pid)
            self.store.set_event_cursor(0)
        self.events_seen = self.store.event_cursor
        self._spawn(self._watch_events(), "ha-watcher")
        self._spawn(self._reconcile(), "reconcile")
        for lb in self.lbs.values():
            if not lb.programmed:
                self._program(lb.name)
        for cluster in {c for c, _ in self._pending_node_deletions()}:
            names = sorted(n for c, n in self._pending_node_deletions() if c == cluster)
            self._spawn(self._retry_node_deletions(cluster, names), f"delete nodes {cluster}")

    async def close(self) -> None:
        tasks = [*self._tasks, *self._restarts.values(), *self._programming.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- host agent -----------------------------------------------------------------------

    async def _ha(self, verb: str, args: dict[str, Any], timeout: float = CALL_MARGIN) -> Any:
        return await self.hostagent.call(verb, args, timeout=timeout)

    async def _start_vm(self, vm: VmRecord) -> dict[str, Any]:
        reply = await self._ha("start_vm", {"config": vm.config, "timeout": START_TIMEOUT},
                               timeout=START_TIMEOUT + CALL_MARGIN)
        return await self._started(vm, reply)

    async def _restart_vm(self, vm: VmRecord) -> dict[str, Any]:
        reply = await self._ha("restart_vm", {"name": vm.name, "timeout": START_TIMEOUT},
                               timeout=START_TIMEOUT + CALL_MARGIN)
        return await self._started(vm, reply)

    async def _started(self, vm: VmRecord, reply: Any) -> dict[str, Any]:
        reply = dict(reply) if isinstance(reply, dict) else {}
        if _leased(vm) and reply.get("mgmt"):
            await self._learn_lease(vm, str(reply["mgmt"]))
        return reply

    async def _learn_lease(self, vm: VmRecord, endpoint: str) -> None:
        """DHCP model: the VM leased its address before it said ready; ask it which."""
        client = mgmt.AsyncMgmtClient(endpoint)
        try:
            stats = await client.call("stats", {}, timeout=5.0)
        except (RemoteError, TimeoutError) as exc:
            log.warning("%s: cannot read its leased address: %s", vm.name, exc)
            return
        finally:
            client.close()
        ips = leased_ips(stats)
        current = self.vms.get(vm.name)
        if ips and current is not None and current.ips != ips:
            self._put_vm(replace(current, ips=ips))
            if current.kind == "apiserver" and current.ips:  # a new lease: the LB's backend moved
                for lb in self.lbs.values():
                    if lb.cluster == current.cluster and lb.lb_vm is not None:
                        self._program(lb.name, reprogram=True)

    async def _host_rows(self) -> dict[str, dict[str, Any]]:
        rows = await self._ha("list", {})
        return {r["name"]: r for r in rows if isinstance(r, dict) and r.get("kind") == "vm"}

    # --- inventory helpers -----------------------------------------------------------------

    def _put_vm(self, vm: VmRecord) -> None:
        self.store.put_vm(vm)
        self.vms[vm.name] = vm

    def _forget_vm(self, name: str) -> None:
        vm = self.vms.pop(name, None)
        if vm is None:
            return
        self.ipam.release_vm(vm.network, name)
        self.store.delete_vm(name)
        task = self._restarts.pop(name, None)
        if task is not None:
            task.cancel()

    def _vm(self, args: dict[str, Any]) -> VmRecord:
        name = mgmt.require(args, "name", str)
        vm = self.vms.get(name)
        if vm is None:
            known = ", ".join(sorted(self.vms)) or "none"
            raise MgmtError(f"name: no VM named {name} in MOC's inventory (known: {known})")
        return vm

    def _cluster(self, args: dict[str, Any], key: str = "name") -> ClusterState:
        name = mgmt.require(args, key, str)
        state = self.clusters.get(name)
        if state is None:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise MgmtError(f"{key}: no cluster named {name} (clusters: {known})")
        return state

    def _vm_config(self, *, name: str, role: str, net: P.NetworkPools, ip: P.IPAddress | None,
                   extra: dict[str, Any]) -> VmRecord:
        """A VM record and the config the host agent gets (docs/contracts-control-plane.md)."""
        spec = net.spec
        mac = P.mac_for(ip) if ip is not None else P.mac_for_name(name)
        nic: dict[str, Any] = {"name": "eth0", "network": net.segment, "mac": mac,
                               "gateway": str(spec.gateway), "mtu": spec.mtu}
        if ip is None:
            nic.update(dhcp=True, addresses=[])
        else:
            nic["addresses"] = [f"{ip}/{spec.prefix.prefixlen}"]
        kind = self.kinds.get(role, "plain" if role == "client" else role)
        config = {"name": name, "kind": kind, "nics": [nic], "routes": [], "apps": [],
                  "time_scale": self.timers.time_scale, "run_dir": self.run_dir, "broker": self.broker,
                  **extra}
        if spec.dns_servers:  # the VM's resolv.conf: its network's dnsServers (a DHCP lease says the same)
            config["dns"] = {"nameservers": list(spec.dns_servers)}
        return VmRecord(name=name, kind=role, cluster=extra.get("cluster"), pool=extra.get("pool"),
                        network=spec.name, ips=[str(ip)] if ip is not None else [], mac=mac,
                        desired="running", config=config)

    def _node_vm(self, cluster: ClusterState, pool: P.NodePoolSpec, index: int, net: P.NetworkPools) -> VmRecord:
        name = f"{pool.name}-{index}"
        ip = self.ipam.allocate_node_ip(net.spec.name, cluster.spec.name, name)
        return self._vm_config(name=name, role="node", net=net, ip=ip, extra={
            "cluster": cluster.spec.name, "pool": pool.name, "os": pool.os_type,
            "apiserver": f"{cluster.vip}:{P.APISERVER_PORT}", "max_pods": cluster.spec.max_pods,
            "network_plugin": cluster.spec.network_plugin, "kube_proxy_mode": cluster.spec.kube_proxy_mode,
            "ipvs_scheduler": cluster.spec.ipvs_scheduler,
            **({"cluster_cidrs": cluster.spec.cluster_cidrs} if cluster.spec.dual_stack else {})})

    def _check_names(self, names: list[str], field_name: str) -> None:
        for name in names:
            if name in self.vms:
                raise MgmtError(f"{field_name}: VM {name} already exists")

    async def _start_all(self, vms: list[VmRecord]) -> list[str]:
        """Start VMs concurrently; return the failures (one line each)."""
        failures: list[str] = []

        async def one(vm: VmRecord) -> None:
            try:
                await self._start_vm(vm)
            except (RemoteError, TimeoutError) as exc:
                failures.append(str(exc))

        await asyncio.gather(*(one(vm) for vm in vms))
        return failures

    def _retire(self, names: list[str]) -> None:
        """Desired state ``stopped`` and no pending HA restart: what is being deleted (or rolled
        back) must not be restarted while its processes are being removed."""
        with self.store.tx():
            for name in names:
                vm = self.vms.get(name)
                if vm is not None and vm.desired != "stopped":
                    self.vms[name] = replace(vm, desired="stopped")
                    self.store.set_desired(name, "stopped")
        for name in names:
            task = self._restarts.pop(name, None)
            if task is not None:
                task.cancel()

    async def _remove_all(self, names: list[str]) -> None:
        """Delete VMs on the host agent (``remove_vm``: stopped, forgotten, config gone)."""
        async def one(name: str) -> None:
            try:
                await self._ha("remove_vm", {"name": name}, timeout=CALL_MARGIN + 5)
            except (RemoteError, TimeoutError) as exc:  # never started, or gone already
                log.info("remove %s: %s", name, exc)

        await asyncio.gather(*(one(n) for n in names))

    def _disks(self, vm: VmRecord) -> list[Path]:
        """What a VM keeps under the run directory: its ``state_dir`` (the API server's store is
        ``clusters/<cluster>``) and ``disks/<vm>`` (the LB VM's applied config)."""
        run_dir = Path(self.run_dir).resolve()
        paths = [run_dir / "disks" / vm.name]
        state_dir = vm.config.get("state_dir")
        if isinstance(state_dir, str) and state_dir:
            paths.append(Path(state_dir))
        # Only inside the run directory: a config never makes MOC delete anything else.
        return [p for p in paths if p.resolve() != run_dir and p.resolve().is_relative_to(run_dir)]

    def _delete_disks(self, vms: list[VmRecord]) -> None:
        for vm in vms:
            for path in self._disks(vm):
                shutil.rmtree(path, ignore_errors=True)

    # --- networks -------------------------------------------------------------------------

    async def network_create(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = P.parse_network(args, self.ipam.specs(), self.reserved)
        except P.PoolError as exc:
            raise _err(exc) from None
        segment = P.segment_of(spec, ((n.spec, n.segment) for n in self.ipam.networks.values()))
        if segment == spec.name and self.broker_api is not None:
            await self._broker_network(spec)
        if spec.name in self.ipam.networks:  # created meanwhile by a concurrent call
            raise MgmtError(f"name: network {spec.name} already exists")
        try:
            self.ipam.add_network(spec, segment)
        except P.PoolError as exc:
            raise _err(exc) from None
        self.store.put_network(spec.name, segment, spec.doc())
        return {**spec.doc(), "model": spec.model, "segment": segment}

    async def _broker_network(self, spec: P.NetworkSpec) -> None:
        """Make sure the datacenter has the segment (the runner may have added it already)."""
        assert self.broker_api is not None
        args = {"name": spec.name, "prefix": str(spec.prefix), "gateway": str(spec.gateway),
                "vlan": spec.vlan_id, "mtu": spec.mtu, "external": spec.external}
        try:
            await self.broker_api.call("add_network", args, timeout=CALL_MARGIN)
        except RemoteError as exc:
            if "already exists" not in str(exc):
                raise MgmtError(f"ipAddressPrefix: the datacenter refused network {spec.name}: {exc}") from None

    def network_get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        name = args.get("name")
        usage = {u["name"]: u for u in self.ipam.usage()}
        if name is not None and name not in self.ipam.networks:
            self._no_network(name)
        return [{**n.spec.doc(), "model": n.spec.model, "usage": usage[n.spec.name]}
                for n in self.ipam.networks.values() if name is None or n.spec.name == name]

    def _no_network(self, name: Any) -> None:
        known = ", ".join(sorted(self.ipam.networks)) or "none yet"
        raise MgmtError(f"name: no network named {name!r} (networks: {known})")

    # --- clusters -------------------------------------------------------------------------

    async def cluster_create(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            spec, warnings = P.parse_cluster(args, list(self.ipam.networks))
        except P.PoolError as exc:
            raise _err(exc) from None
        if spec.name in self.clusters:
            raise MgmtError(f"name: cluster {spec.name} already exists")
        names = [f"{spec.name}-control-plane-{i}" for i in range(spec.control_plane_count)]
        names += [f"{spec.name}-lb"] if spec.has_lb_vm else []
        self._check_names(names, "name")
        for i, pool in enumerate(spec.node_pools):
            self._check_names([f"{pool.name}-{k}" for k in range(pool.count)], f"nodePools[{i}].name")
        vms, lb = self._plan_cluster(spec, warnings)  # raises before anything is recorded
        state = self.clusters[spec.name]
        async with state.lock:
            # The control plane and its LB VM first, the nodes once the VIP is served: a
            # kubelet's first request would otherwise go to an unclaimed VIP and wait for its
            # timeout (the real product also brings the control plane up before the nodes).
            infra = [vm for vm in vms if vm.kind in ("apiserver", "haproxy")]
            failures = await self._start_all(infra)
            if not failures:
                await self._until_programmed(lb.name, LB_READY_WAIT)
                failures = await self._start_all([vm for vm in vms if vm not in infra])
            if failures:
                names = [vm.name for vm in vms]
                self._retire(names)
                await self._remove_all(names)
                self._drop_cluster(spec.name)
                raise MgmtError(f"{spec.name}: {failures[0]}")
        return {"name": spec.name, "vnet": spec.vnet, "vip": state.vip, "loadBalancer": lb.name,
                "vms": [{"name": vm.name, "role": vm.kind, "ips": vm.ips} for vm in vms],
                "warnings": warnings}

    def _plan_cluster(self, spec: P.ClusterSpec, warnings: list[str]) -> tuple[list[VmRecord], LbRecord]:
        """Reserve, allocate and record a whole cluster in one transaction (no await)."""
        try:
            self.ipam.reserve_cluster(spec)
        except P.PoolError as exc:
            raise _err(exc) from None
        net = self.ipam.get(spec.vnet)
        try:
            vip = str(self.ipam.allocate_vip(spec.vnet, spec.name, "apiserver"))
            state = ClusterState(spec, vip, list(warnings))
            vms: list[VmRecord] = []
            for i in range(spec.control_plane_count):
                name = f"{spec.name}-control-plane-{i}"
                ip = self.ipam.allocate_node_ip(spec.vnet, spec.name, name)
                vms.append(self._vm_config(name=name, role="apiserver", net=net, ip=ip, extra={
                    "cluster": spec.name, "pool": "control-plane", "vip": vip,
                    **({"moc": self.cloudagent_address} if self.cloudagent_address else {}),
                    "state_dir": f"{self.run_dir}/clusters/{spec.name}", "kube_vip": not spec.has_lb_vm,
                    **({"service_cidrs": spec.service_cidrs, "cluster_cidrs": spec.cluster_cidrs}
                       if spec.dual_stack else {})}))
            if spec.has_lb_vm:
                name = f"{spec.name}-lb"
                ip = self.ipam.allocate_node_ip(spec.vnet, spec.name, name)
                vms.append(self._vm_config(name=name, role="haproxy", net=net, ip=ip,
                                           extra={"cluster": spec.name, "pool": "lb"}))
            for pool in spec.node_pools:
                vms.extend(self._node_vm(state, pool, k, net) for k in range(pool.count))
        except P.PoolError as exc:
            self.ipam.release_cluster(spec.name)
            raise _err(exc) from None
        lb = LbRecord(name=f"{spec.name}-lb" if spec.has_lb_vm else f"{spec.name}-kube-vip", cluster=spec.name,
                      network=spec.vnet, vip=vip, sku=spec.lb_sku, lb_vm=f"{spec.name}-lb" if spec.has_lb_vm else None,
                      config=self._lb_doc(vip, [v for v in vms if v.kind == "apiserver"]),
                      programmed=not spec.has_lb_vm)
        doc = {k: v for k, v in spec.doc().items() if k != "nodePools"}
        with self.store.tx():
            self.store.put_cluster(ClusterRow(name=spec.name, network=spec.vnet, spec=doc,
                                              reservation=self.ipam.reservation(spec.name, spec.vnet),
                                              vip=vip, warnings=list(warnings)))
            for pool in spec.node_pools:
                self.store.put_nodepool(NodePoolRow(cluster=spec.name, name=pool.name, os_type=pool.os_type,
                                                    count=pool.count))
            self.store.put_vip(VipRow(network=spec.vnet, ip=vip, cluster=spec.name, holder="apiserver", port=None))
            for vm in vms:
                self._put_vm(vm)
            self.store.put_lb(lb)
        self.clusters[spec.name] = state
        self.lbs[lb.name] = lb
        return vms, lb

    def _lb_doc(self, vip: str, control_planes: list[VmRecord]) -> dict[str, Any]:
        """The lbagent document: the API server VIP:6443 -> control plane :6443 (mode tcp).
        A control plane with a lease not learned yet has no address (``""``)."""
        servers = [{"name": vm.name, "address": vm.ips[0] if vm.ips else "", "port": P.APISERVER_PORT}
                   for vm in control_planes]
        return {"vips": [vip],
                "frontends": [{"name": "apiserver", "bind": f"{vip}:{P.APISERVER_PORT}", "backend": "apiserver"}],
                "backends": [{"name": "apiserver", "balance": "roundrobin",
                              "check": {"inter": self.timers.haproxy_check_inter, "rise": 2, "fall": 3},
                              "servers": servers}]}

    def _cluster_lb_doc(self, lb: LbRecord) -> dict[str, Any]:
        """The API server frontend plus one frontend per LoadBalancer Service VIP:port."""
        doc = self._lb_doc(lb.vip, [v for v in self.vms.values() if v.cluster == lb.cluster
                                    and v.kind == "apiserver"])
        services = [sv for sv in self.service_lbs.values() if sv[0].cluster == lb.cluster]
        if not services:
            return doc
        nodes = [(v.name, v.ips[0]) for v in self.vms.values()
                 if v.cluster == lb.cluster and v.kind == "node" and v.ips and v.desired == "running"]
        vips, frontends, backends = LBS.service_parts(services, nodes, doc["backends"][0]["check"])
        return {"vips": doc["vips"] + [v for v in vips if v not in doc["vips"]],
                "frontends": doc["frontends"] + frontends, "backends": doc["backends"] + backends}

    # --- LoadBalancer Services (the cloud provider's requests) ------------------------------

    def _save_service_lbs(self) -> None:
        self.store.set_meta(SERVICE_LBS, {k: {"request": svc.doc(), "vip": vip}
                                          for k, (svc, vip) in self.service_lbs.items()})

    def _cluster_lb(self, cluster: str) -> LbRecord | None:
        return next((lb for lb in self.lbs.values() if lb.cluster == cluster and lb.lb_vm is not None), None)

    async def lb_ensure(self, args: dict[str, Any]) -> dict[str, Any]:
        """Allocate (or keep) a Service's VIP, program the cluster's LB VM, route it."""
        try:
            svc = LBS.parse_ensure(args)
        except P.PoolError as exc:
            raise _err(exc) from None
        state = self.clusters.get(svc.cluster)
        if state is None:
            raise MgmtError(f"cluster: no cluster named {svc.cluster}")
        lb = self._cluster_lb(svc.cluster)
        if lb is None:
            raise MgmtError(f"cluster: {svc.cluster} has no HAProxy load balancer (loadBalancerSku none)")
        net = self.ipam.get(state.spec.vnet)
        if net.vip is None:
            raise MgmtError(f"cluster: network {net.spec.name} has no VIP pool")
        old = self.service_lbs.get(svc.key)
        try:
            vip = LBS.allocate(net.vip, svc, mode=net.spec.vip_allocation, pool_name=net.spec.name,
                               others=[sv for sv in self.service_lbs.values()
                                       if self.clusters.get(sv[0].cluster) is not None
                                       and self.clusters[sv[0].cluster].spec.vnet == state.spec.vnet])
        except P.PoolError as exc:
            raise _err(exc) from None
        self.service_lbs[svc.key] = (svc, vip)
        self._save_service_lbs()
        if old is not None and old[0].internal and (old[1] != vip or not svc.internal):
            await self._unroute_internal(old[1])
        if svc.internal:
            await self._route_internal(vip, net)
        if old is None or old != (svc, vip):
            self._program(lb.name, reprogram=True)
        programmed = await self._until_programmed(lb.name, SERVICE_PROGRAM_WAIT)
        return {"vip": vip, "internal": svc.internal, "loadBalancer": lb.name, "programmed": programmed,
                "network": net.spec.name}

    async def lb_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        key = "/".join(str(args.get(k, "")) for k in ("cluster", "namespace", "name"))
        entry = self.service_lbs.pop(key, None)
        if entry is None:
            return {"deleted": None}
        svc, vip = entry
        state = self.clusters.get(svc.cluster)
        if state is not None:
            pool = self.ipam.get(state.spec.vnet).vip
            if pool is not None:
                pool.release(svc.cluster, svc.holder)
        self._save_service_lbs()
        if svc.internal:
            await self._unroute_internal(vip)
        lb = self._cluster_lb(svc.cluster)
        if lb is not None:
            self._program(lb.name, reprogram=True)
        return {"deleted": key, "vip": vip}

    def _reprogram_services(self, cluster: str) -> None:
        """Nodes came or went: the Services' backends change."""
        lb = self._cluster_lb(cluster)
        if lb is not None and any(svc.cluster == cluster for svc, _ in self.service_lbs.values()):
            self._program(lb.name, reprogram=True)

    def _external_networks(self) -> list[str]:
        return [n.segment for n in self.ipam.networks.values() if n.spec.external]

    async def _route_internal(self, vip: str, net: P.NetworkPools) -> None:
        """An internal VIP: the datacenter router must not route it from the external
        network.  A /32 route for the external networks' own traffic points back into the
        external network, where nobody holds the VIP: a counted no-route drop."""
        if self.broker_api is None:
            return
        for ext in self._external_networks():
            try:
                await self.broker_api.call("add_route", {"prefix": f"{vip}/32", "network": ext, "sources": [ext]},
                                           timeout=CALL_MARGIN)
            except RemoteError as exc:
                log.warning("internal VIP %s: route from %s not restricted: %s", vip, ext, exc)

    async def _unroute_internal(self, vip: str) -> None:
        if self.broker_api is None or any(v == vip and s.internal for s, v in self.service_lbs.values()):
            return
        for ext in self._external_networks():
            with contextlib.suppress(RemoteError, TimeoutError):
                await self.broker_api.call("remove_route", {"prefix": f"{vip}/32", "network": ext},
                                           timeout=CALL_MARGIN)

    def _drop_cluster(self, name: str) -> None:
        """Forget a cluster, free its addresses and delete its VMs' disks (the caller removed
        the VMs): a cluster created again under this name starts from an empty store."""
        vms = [v for v in self.vms.values() if v.cluster == name]
        for vm in vms:
            self._forget_vm(vm.name)
        self._delete_disks(vms)
        for lb in [lb for lb in self.lbs.values() if lb.cluster == name]:
            self.lbs.pop(lb.name, None)
            task = self._programming.pop(lb.name, None)
            if task is not None:
                task.cancel()
        self.ipam.release_cluster(name)
        for key in [k for k, (svc, _) in self.service_lbs.items() if svc.cluster == name]:
            del self.service_lbs[key]
        self._save_service_lbs()
        self.store.delete_cluster(name)
        self._set_pending_node_deletions(name, [n for c, n in self._pending_node_deletions() if c == name],
                                         pending=False)
        self.clusters.pop(name, None)

    async def cluster_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self._cluster(args)
        name = state.spec.name
        async with state.lock:
            if name not in self.clusters:
                raise MgmtError(f"name: no cluster named {name}")
            vms = [v.name for v in self.vms.values() if v.cluster == name]
            self._retire(vms)  # no HA restart of what is being deleted
            await self._remove_all(vms)
            self._drop_cluster(name)
        return {"deleted": name, "vms": vms}

    def cluster_get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        name = args.get("name")
        if name is not None:
            self._cluster(args)
        return [self._cluster_row(c) for c in self.clusters.values() if name is None or c.spec.name == name]

    def _cluster_row(self, c: ClusterState) -> dict[str, Any]:
        lb = next((lb for lb in self.lbs.values() if lb.cluster == c.spec.name), None)
        return {**c.spec.doc(), "vip": c.vip, "warnings": c.warnings,
                "loadBalancer": None if lb is None else {"name": lb.name, "programmed": lb.programmed},
                "vms": [v.name for v in self.vms.values() if v.cluster == c.spec.name]}

    # --- node pools -----------------------------------------------------------------------

    async def nodepool_create(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self._cluster(args, "cluster")
        body = {k: v for k, v in args.items() if k != "cluster"}
        try:
            pool = P.parse_node_pool(body, "", state.spec.name)
        except P.PoolError as exc:
            raise _err(exc) from None
        async with state.lock:
            if any(p.name == pool.name for c in self.clusters.values() for p in c.spec.node_pools):
                raise MgmtError(f"name: node pool {pool.name} already exists")
            self._check_names([f"{pool.name}-{k}" for k in range(pool.count)], "name")
            state.spec = state.spec.with_pools([*state.spec.node_pools, P.NodePoolSpec(
                name=pool.name, os_type=pool.os_type, count=0)])
            self.store.put_nodepool(NodePoolRow(cluster=state.spec.name, name=pool.name,
                                                os_type=pool.os_type, count=0))
            try:
                return await self._scale(state, pool.name, pool.count)
            except MgmtError:
                self._remove_pool(state, pool.name)
                raise

    async def nodepool_scale(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self._cluster(args, "cluster")
        name = mgmt.require(args, "name", str)
        count = mgmt.require(args, "nodeCount", int)
        if isinstance(count, bool) or not 0 <= count <= 1000:
            raise MgmtError(f"nodeCount: expected 0..1000, got {count!r}")
        async with state.lock:
            try:
                state.spec.pool(name)
            except P.PoolError as exc:
                raise _err(exc) from None
            return await self._scale(state, name, count)

    async def nodepool_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self._cluster(args, "cluster")
        name = mgmt.require(args, "name", str)
        async with state.lock:
            try:
                state.spec.pool(name)
            except P.PoolError as exc:
                raise _err(exc) from None
            result = await self._scale(state, name, 0)
            self._remove_pool(state, name)
        return {**result, "deleted": name}

    def _remove_pool(self, state: ClusterState, name: str) -> None:
        state.spec = state.spec.with_pools([p for p in state.spec.node_pools if p.name != name])
        self.store.delete_nodepool(state.spec.name, name)

    async def _scale(self, state: ClusterState, name: str, count: int) -> dict[str, Any]:
        """Add or remove node VMs of one pool (held: the cluster's lock)."""
        spec = state.spec
        pool = spec.pool(name)
        current = sorted((v for v in self.vms.values() if v.cluster == spec.name and v.pool == name),
                         key=lambda v: _index(v.name))
        if count > len(current):
            added = await self._grow(state, pool, count - len(current), current)
            return {"cluster": spec.name, "name": name, "nodeCount": count, "added": added, "removed": []}
        removed = [v.name for v in current[count:]]
        self._retire(removed)
        await self._remove_all(removed)
        for vm in removed:
            self._forget_vm(vm)
        self.ipam.shrink(spec.name, spec.vnet, len(removed))
        self._set_count(state, pool, count)
        self._reprogram_services(spec.name)
        await self._delete_nodes(spec.name, removed)
        return {"cluster": spec.name, "name": name, "nodeCount": count, "added": [], "removed": removed}

    async def _grow(self, state: ClusterState, pool: P.NodePoolSpec, more: int,
                    current: list[VmRecord]) -> list[str]:
        spec = state.spec
        net = self.ipam.get(spec.vnet)
        used = {_index(v.name) for v in current}
        indices = list(itertools.islice((i for i in itertools.count() if i not in used), more))
        self._check_names([f"{pool.name}-{i}" for i in indices], "name")
        try:
            self.ipam.grow(spec.name, spec.vnet, more, pool.name)
            new = [self._node_vm(state, pool, i, net) for i in indices]
        except P.PoolError as exc:
            raise _err(exc) from None
        with self.store.tx():
            for vm in new:
                self._put_vm(vm)
            self._set_count(state, pool, len(current) + more)
        failures = await self._start_all(new)
        if failures:
            self._retire([vm.name for vm in new])
            await self._remove_all([vm.name for vm in new])
            for vm in new:
                self._forget_vm(vm.name)
            self.ipam.shrink(spec.name, spec.vnet, more)
            self._set_count(state, pool, len(current))
            raise MgmtError(f"{pool.name}: {failures[0]}")
        self._reprogram_services(spec.name)
        return [vm.name for vm in new]

    def _set_count(self, state: ClusterState, pool: P.NodePoolSpec, count: int) -> None:
        """Record a pool's node count and the cluster's node-pool reservation."""
        spec = state.spec
        state.spec = spec.with_pools([P.NodePoolSpec(name=p.name, os_type=p.os_type, count=count)
                                      if p.name == pool.name else p for p in spec.node_pools])
        with self.store.tx():
            self.store.put_nodepool(NodePoolRow(cluster=spec.name, name=pool.name, os_type=pool.os_type,
                                                count=count))
            self.store.set_reservation(spec.name, self.ipam.reservation(spec.name, spec.vnet))

    # --- Node objects of removed node VMs ---------------------------------------------------

    async def _delete_nodes(self, cluster: str, names: list[str]) -> None:
        """After removing node VMs, delete their Node objects through the cluster's API server
        (VIP:6443, over the emulated network), as Cluster API does when a Machine's VM is
        deleted; otherwise they would stay NotReady forever.  One attempt now; what fails is
        retried in the background (and after a restart of MOC: the pending list is stored)."""
        if self.node_deleter is None or not names:
            return
        self._set_pending_node_deletions(cluster, names, pending=True)
        left = await self._node_deletion_pass(cluster, names)
        if left:
            self._spawn(self._retry_node_deletions(cluster, left), f"delete nodes {cluster}")

    async def _node_deletion_pass(self, cluster: str, names: list[str]) -> list[str]:
        """Try each deletion once; return the names still pending."""
        state = self.clusters.get(cluster)
        deleter = self.node_deleter
        if state is None or deleter is None:  # the cluster went, and its API server with it
            self._set_pending_node_deletions(cluster, names, pending=False)
            return []

        async def one(name: str) -> bool:
            if name in self.vms:  # a node VM of that name exists again: its kubelet owns the Node
                return True
            try:
                await deleter(state.vip, name)
            except Exception as exc:  # unreachable, refused: try again later
                log.info("deleting Node %s of cluster %s: %s", name, cluster, exc)
                return False
            log.info("Node %s of cluster %s deleted", name, cluster)
            return True

        results = await asyncio.gather(*(one(n) for n in names))
        self._set_pending_node_deletions(cluster, [n for n, ok in zip(names, results, strict=True) if ok],
                                         pending=False)
        return [n for n, ok in zip(names, results, strict=True) if not ok]

    async def _retry_node_deletions(self, cluster: str, names: list[str]) -> None:
        delay = LB_RETRY_MIN
        while names:
            await asyncio.sleep(delay)
            delay = min(delay * 2, NODE_DELETE_RETRY_MAX)
            names = await self._node_deletion_pass(cluster, names)

    def _pending_node_deletions(self) -> set[tuple[str, str]]:
        return {(str(c), str(n)) for c, n in self.store.get_meta(PENDING_NODE_DELETIONS, [])}

    def _set_pending_node_deletions(self, cluster: str, names: list[str], *, pending: bool) -> None:
        current = self._pending_node_deletions()
        pairs = {(cluster, n) for n in names}
        current = current | pairs if pending else current - pairs
        self.store.set_meta(PENDING_NODE_DELETIONS, sorted(current))

    # --- client VMs -----------------------------------------------------------------------

    async def client_create(self, args: dict[str, Any]) -> dict[str, Any]:
        """A client VM on a MOC network (fixed ``ip`` outside the pools, or ``dhcp: true``);
        ``kind: dns`` with ``records`` (and ``zones``) is a datacenter DNS server."""
        name = mgmt.require(args, "name", str)
        if name in self.vms:
            raise MgmtError(f"name: VM {name} already exists")
        network = mgmt.require(args, "network", str)
        if network not in self.ipam.networks:
            self._no_network(network)
        net = self.ipam.get(network)
        ip = self._client_ip(args, net)
        apps = args.get("apps", [])
        if not isinstance(apps, list | tuple) or not all(isinstance(a, Mapping) for a in apps):
            raise MgmtError("apps: expected a list of {kind, port} objects")
        apps = [dict(a) for a in apps]
        kind = args.get("kind", self.kinds.get("client", "plain"))
        if not isinstance(kind, str):
            raise MgmtError(f"kind: expected a VM kind, got {kind!r}")
        extra = {"apps": apps, **_dns_keys(args, kind, ip)}
        vm = self._vm_config(name=name, role="client", net=net, ip=ip, extra=extra)
        vm = replace(vm, config={**vm.config, "kind": kind})
        self._put_vm(vm)
        failures = await self._start_all([vm])
        if failures:
            self._retire([name])
            await self._remove_all([name])
            self._forget_vm(name)
            raise MgmtError(failures[0])
        vm = self.vms.get(name, vm)
        return {"name": name, "network": network, "ips": vm.ips, "mac": vm.mac}

    def _client_ip(self, args: dict[str, Any], net: P.NetworkPools) -> P.IPAddress | None:
        if args.get("dhcp") is True:
            if net.spec.dhcp_scope is None:
                raise MgmtError(f"dhcp: network {net.spec.name} has no DHCP scope (static IP model)")
            return None
        text = mgmt.require(args, "ip", str)
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise MgmtError(f"ip: {text!r} is not an IP address") from None
        if ip not in net.spec.prefix:
            raise MgmtError(f"ip: {ip} is outside network {net.spec.name} ({net.spec.prefix})")
        inside = self.ipam.pool_containing(net.spec.name, ip)
        if inside is not None:
            raise MgmtError(f"ip: {ip} lies inside {inside} of network {net.spec.name}")
        if ip == net.spec.gateway or str(ip) in self.reserved:
            raise MgmtError(f"ip: {ip} is taken ({'the gateway' if ip == net.spec.gateway else self.reserved[str(ip)]})")
        for vm in self.vms.values():
            if vm.network == net.spec.name and str(ip) in vm.ips:
                raise MgmtError(f"ip: {ip} is already used by VM {vm.name}")
        return ip

    # --- VM power state -------------------------------------------------------------------

    async def vm_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        """Power off: desired state ``stopped`` first, so the HA watcher leaves it down."""
        vm = self._vm(args)
        self.store.set_desired(vm.name, "stopped")
        self.vms[vm.name] = replace(vm, desired="stopped")
        task = self._restarts.pop(vm.name, None)
        if task is not None:
            task.cancel()
        try:
            row = await self._ha("stop_vm", {"name": vm.name}, timeout=CALL_MARGIN + 5)
        except RemoteError as exc:
            raise MgmtError(str(exc)) from None
        return {"name": vm.name, "desired": "stopped", "state": row.get("state")}

    async def vm_start(self, args: dict[str, Any]) -> dict[str, Any]:
        vm = self._vm(args)
        self.store.set_desired(vm.name, "running")
        self.vms[vm.name] = replace(vm, desired="running")
        row = (await self._host_rows()).get(vm.name)
        if row is not None and row.get("state") == "running":
            return {"name": vm.name, "desired": "running", "state": "running", "pid": row.get("pid")}
        try:
            if row is None:
                reply = await self._start_vm(vm)
            else:
                reply = await self._restart_vm(vm)
        except RemoteError as exc:
            raise MgmtError(str(exc)) from None
        return {"name": vm.name, "desired": "running", "state": "running", "pid": reply.get("pid")}

    # --- the HA watcher -------------------------------------------------------------------

    async def _watch_events(self) -> None:
        """Long-poll the host agent's events from the saved cursor; act on each once."""
        backoff = 0.1
        while True:
            try:
                events = await self._ha("events", {"since": self.events_seen, "wait_s": EVENTS_WAIT_S,
                                                   "limit": 500}, timeout=EVENTS_WAIT_S + CALL_MARGIN)
            except (RemoteError, TimeoutError) as exc:
                log.warning("host agent events: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if events and self.events_seen and events[0].get("seq", 0) > self.events_seen + 1:
                log.warning("missed host agent events %d..%d: reconciling", self.events_seen + 1, events[0]["seq"] - 1)
                self._spawn(self._reconcile(), "reconcile")
            for event in events:
                try:
                    self._on_event(event)
                except Exception:  # a strange event must not stop the watcher
                    log.exception("host agent event %s", event)
                self.events_seen = max(self.events_seen, int(event.get("seq", 0)))
            if events:
                self.store.set_event_cursor(self.events_seen)

    def _on_event(self, event: dict[str, Any]) -> None:
        vm = self.vms.get(str(event.get("name")))
        if vm is None:
            return
        kind = event.get("kind")
        if kind == "vm-exited" and not event.get("expected") and vm.desired == "running":
            log.info("%s died (%s): restarting in %g s", vm.name, event.get("signal") or f"code {event.get('code')}",
                     self.timers.ha_restart_delay)
            self._schedule_restart(vm.name)
        elif kind == "vm-started" and vm.kind == "haproxy":
            for lb in self.lbs.values():
                if lb.lb_vm == vm.name:
                    self._program(lb.name, reprogram=True)

    def _schedule_restart(self, name: str) -> None:
        task = self._restarts.get(name)
        if task is not None and not task.done():
            return
        self._restarts[name] = asyncio.get_running_loop().create_task(self._restart(name), name=f"ha {name}")

    async def _restart(self, name: str) -> None:
        """The failover cluster's restart: after the HA delay, if it should still run."""
        for attempt in range(HA_TRIES):
            await asyncio.sleep(self.timers.ha_restart_delay)
            vm = self.vms.get(name)
            if vm is None or vm.desired != "running":
                return
            try:
                row = (await self._host_rows()).get(name)
                if row is not None and row.get("state") in ("running", "starting"):
                    return  # someone started it meanwhile
                if row is None:
                    await self._start_vm(vm)
                else:
                    await self._restart_vm(vm)
            except (RemoteError, TimeoutError) as exc:
                log.warning("HA restart of %s (attempt %d) failed: %s", name, attempt + 1, exc)
                continue
            self.ha_restarts += 1
            self.ha_failures.pop(name, None)
            log.info("HA restarted %s", name)
            return
        self.ha_failures[name] = f"{HA_TRIES} restarts failed"

    async def _reconcile(self) -> None:
        """After a (re)start: make the host agent's VMs match the desired states."""
        try:
            rows = await self._host_rows()
        except (RemoteError, TimeoutError) as exc:
            log.warning("reconcile: %s", exc)
            return
        for vm in list(self.vms.values()):
            state = rows.get(vm.name, {}).get("state")
            if vm.desired == "running" and state not in ("running", "starting"):
                self._schedule_restart(vm.name)
            elif vm.desired == "stopped" and state == "running":
                with contextlib.suppress(RemoteError, TimeoutError):
                    await self._ha("stop_vm", {"name": vm.name}, timeout=CALL_MARGIN + 5)

    # --- load balancer programming ----------------------------------------------------------

    def _program(self, name: str, *, reprogram: bool = False) -> None:
        lb = self.lbs.get(name)
        if lb is None or lb.lb_vm is None:
            return
        if reprogram and lb.programmed:
            self._programmed.pop(name, None)
            lb = replace(lb, programmed=False)
            self.lbs[name] = lb
            self.store.set_programmed(name, False)
        task = self._programming.get(name)
        if task is not None and not task.done():
            task.cancel()  # a newer start of the LB VM: begin again
        self._programming[name] = asyncio.get_running_loop().create_task(self._program_loop(name),
                                                                         name=f"lb {name}")

    async def _program_loop(self, name: str) -> None:
        """PUT the config to the lbagent until it takes it (the VM may still be booting)."""
        delay = LB_RETRY_MIN
        while True:
            lb = self.lbs.get(name)
            vm = self.vms.get(lb.lb_vm) if lb is not None and lb.lb_vm else None
            if lb is None or vm is None:
                return
            doc = self._cluster_lb_doc(lb)
            if doc != lb.config:  # a control plane's lease learned or changed
                lb = replace(lb, config=doc)
                self.lbs[name] = lb
                self.store.put_lb(lb)
            addresses_known = all(s["address"] for b in doc["backends"] for s in b["servers"])
            if vm.ips and addresses_known:
                try:
                    await (self.lb_programmer or self._put_lbagent)(vm.ips[0], lb.config)
                except Exception as exc:  # refused, unreachable, not up yet: try again
                    log.info("programming %s at %s:%d: %s", name, vm.ips[0], LBAGENT_PORT, exc)
                else:
                    self.lbs[name] = replace(lb, programmed=True)
                    self.store.set_programmed(name, True)
                    self._programmed.setdefault(name, asyncio.Event()).set()
                    log.info("load balancer %s programmed (VIP %s)", name, lb.vip)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, LB_RETRY_MAX)

    async def _until_programmed(self, name: str, timeout: float) -> bool:
        """Wait (bounded) until the load balancer ``name`` took its config; sku none: at once."""
        lb = self.lbs.get(name)
        if lb is None or lb.programmed:
            return True
        event = self._programmed.setdefault(name, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            log.warning("load balancer %s not programmed within %.1f s; starting the nodes anyway", name, timeout)
            return False
        return True

    async def _put_lbagent(self, ip: str, doc: dict[str, Any]) -> None:
        raise RuntimeError("no network: the cloud agent VM supplies the lbagent client")

    # --- reports --------------------------------------------------------------------------

    def _vm_rows(self, host: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for vm in self.vms.values():
            h = host.get(vm.name, {})
            rows.append({"name": vm.name, "role": vm.kind, "kind": vm.config.get("kind"), "cluster": vm.cluster,
                         "pool": vm.pool, "network": vm.network, "ips": vm.ips, "mac": vm.mac,
                         "desired": vm.desired, "state": h.get("state", "absent"), "pid": h.get("pid"),
                         "mgmt": h.get("mgmt")})
        return rows

    async def vm_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self._vm_rows(await self._host_rows())

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            host = await self._host_rows()
        except (RemoteError, TimeoutError) as exc:
            host = {}
            warnings = [f"host agent: {exc}"]
        else:
            warnings = []
        for c in self.clusters.values():
            warnings += [f"{c.spec.name}: {w}" for w in c.warnings]
        for lb in self.lbs.values():
            if not lb.programmed:
                warnings.append(f"{lb.cluster}: load balancer {lb.name} is not programmed yet")
        vms = self._vm_rows(host)
        for row in vms:
            if row["desired"] == "running" and row["state"] != "running":
                warnings.append(f"{row['name']}: {row['state']} (desired running)")
        warnings += self._dns_warnings()
        warnings += [f"{name}: HA gave up: {why}" for name, why in self.ha_failures.items()]
        lb_rows = self._lb_rows()
        warnings += duplicate_vip_warnings(lb_rows)
        return {"networks": self.ipam.usage(), "clusters": [self._cluster_row(c) for c in self.clusters.values()],
                "vms": vms, "loadbalancers": lb_rows, "warnings": warnings,
                "ha": {"restart_delay_s": self.timers.ha_restart_delay, "restarts": self.ha_restarts,
                       "pending": sorted(n for n, t in self._restarts.items() if not t.done()),
                       "event_cursor": self.events_seen}}

    def _dns_warnings(self) -> list[str]:
        """A network's ``dnsServers`` that no DNS VM of this deployment holds: allowed (an
        external server), but nothing here answers there, so names will not resolve."""
        held = {ip for vm in self.vms.values() if vm.config.get("kind") == "dns" for ip in vm.ips}
        out = []
        for net in self.ipam.networks.values():
            for server in net.spec.dns_servers:
                if server not in held:
                    out.append(f"network {net.spec.name}: dnsServers {server} is no DNS VM of this deployment "
                               "(taken to be an external DNS server; names resolve only if it answers)")
        return out

    def _lb_rows(self) -> list[dict[str, Any]]:
        return [{"name": lb.name, "cluster": lb.cluster, "network": lb.network, "sku": lb.sku,
                 "vip": lb.vip, "lbVm": lb.lb_vm, "programmed": lb.programmed,
                 "services": [{"service": svc.holder, "vip": vip, "ports": [p.port for p in svc.ports],
                               "internal": svc.internal} for svc, vip in self.service_lbs.values()
                              if svc.cluster == lb.cluster],
                 "frontends": lb.config.get("frontends", []), "backends": lb.config.get("backends", [])}
                for lb in self.lbs.values()]

    def loadbalancers(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Like ``Get-MocLoadBalancer``: the VIPs in use and what they front."""
        return self._lb_rows()

    def networkinterfaces(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Like ``Get-MocNetworkInterface``: every NIC MOC created, with its IP and MAC."""
        out = []
        for vm in self.vms.values():
            for nic in vm.config.get("nics", []):
                out.append({"name": f"{vm.name}-{nic['name']}", "vm": vm.name, "network": vm.network,
                            "segment": nic["network"], "ip": vm.ips[0] if vm.ips else None,
                            "mac": nic["mac"], "dhcp": bool(nic.get("dhcp"))})
        return out

    async def wait_ready(self, args: dict[str, Any]) -> dict[str, Any]:
        """Until every VM that should run runs and every load balancer is programmed."""
        timeout = args.get("timeout_s", 30.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
            raise MgmtError(f"timeout_s: expected seconds 0..600, got {timeout!r}")
        deadline = time.monotonic() + timeout
        while True:
            host = await self._host_rows()
            waiting = [vm.name for vm in self.vms.values()
                       if vm.desired == "running" and host.get(vm.name, {}).get("state") != "running"]
            waiting += [f"load balancer {lb.name}" for lb in self.lbs.values() if not lb.programmed]
            if not waiting:
                return {"ready": True, "vms": len(self.vms), "loadbalancers": len(self.lbs)}
            if time.monotonic() > deadline:
                raise MgmtError(f"timeout_s: not ready within {timeout:g} s, waiting for {', '.join(waiting[:5])}"
                                + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""))
            await asyncio.sleep(0.05)


def duplicate_vip_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per VIP that load balancers of two or more clusters hold on one network (rows as
    the ``loadbalancers`` verb gives them): the known issue of clusters sharing an
    ``AksHciClusterNetwork`` whose Services use different ports (see FACTS.md)."""
    holders: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        network, cluster = str(row.get("network") or ""), str(row.get("cluster") or "")
        vips = {str(row["vip"])} if row.get("vip") else set()
        vips |= {str(s["vip"]) for s in row.get("services") or [] if isinstance(s, Mapping) and s.get("vip")}
        for vip in vips:
            holders.setdefault((network, vip), set()).add(cluster)
    out = []
    for (network, vip), clusters in sorted(holders.items(), key=lambda kv: (kv[0][0], _ip_key(kv[0][1]))):
        if len(clusters) > 1:
            names = sorted(clusters)
            who = ", ".join(names[:-1]) + " and " + names[-1]
            out.append(f"VIP {vip} is used by load balancers of clusters {who} on network {network} (known issue: "
                       "clusters sharing an AksHciClusterNetwork with workloads on different ports); redeploy on "
                       "the same port or give each cluster its own network")
    return out


def _ip_key(text: str) -> tuple[int, str]:
    try:
        return int(ipaddress.ip_address(text)), text
    except ValueError:
        return -1, text


def _dns_keys(args: Mapping[str, Any], kind: str, ip: P.IPAddress | None) -> dict[str, Any]:
    """The config keys of a DNS VM (``records``, ``zones``), checked as the VM will load them."""
    # lists arrive as tuples from the management plane; the VM's config is JSON
    given = {k: [dict(v) if isinstance(v, Mapping) else v for v in args[k]]
             if isinstance(args[k], list | tuple) else args[k] for k in ("records", "zones") if k in args}
    if kind != "dns":
        if given:
            raise MgmtError(f"{next(iter(given))}: only a VM of kind dns serves records")
        return {}
    if ip is None:
        raise MgmtError("dhcp: a DNS server needs a fixed ip (the address its network's dnsServers names)")
    try:
        StaticZone.from_config(given)
    except StaticZoneError as exc:
        raise MgmtError(str(exc)) from None
    return {"records": given.get("records", []), **({"zones": given["zones"]} if "zones" in given else {})}


def leased_ips(stats: Any, nic: str = "eth0") -> list[str]:
    """A VM's leased addresses on ``nic`` from its ``stats``: its DHCP clients' (``dhcp``), not
    every claim (a kube-vip control plane also claims the VIP there)."""
    if not isinstance(stats, dict):
        return []
    leases = [str(d["ip"]) for d in stats.get("dhcp") or [] if isinstance(d, dict) and d.get("nic") == nic
              and d.get("ip")]
    if leases:
        return leases
    claims = stats.get("claims") or {}
    return [str(ip) for ip in claims.get(nic, [])] if isinstance(claims, dict) else []


def _leased(vm: VmRecord) -> bool:
    """Does this VM lease its address (DHCP model) rather than get one from a pool?"""
    return any(nic.get("dhcp") for nic in vm.config.get("nics", []))


def _index(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


