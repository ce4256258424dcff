"""The node VM's datapath (sans-IO): a root stack, one stack per pod, veths and VXLAN.

Shape (docs/contracts-pod-network.md, "Packet path on a node")::

    pod NetStack (eth0 = podIP, default route via the gateway)      one per pod: its netns
        │ veth: an in-process link, no wire (host side: an interface of the root stack)
    root NetStack (the node VM's; forwarding on)
        PREROUTING  masquerade's reply un-NAT (first), then kube-proxy's hooks
        FORWARD     (policy is enforced on the veths: see ``policy``)
        route       local pod /32 → its veth | remote pod CIDR / block → VXLAN device
                    | elsewhere → eth0
        POSTROUTING the CNI's masquerade, kube-proxy's SNAT
        │
    wire NICs (eth0): returned by :meth:`NodeDatapath.pump` for the runtime to send
    VXLAN device (``flannel.4096`` / ``vxlan.calico``, MTU 1450): what the root routes to
        it is encapsulated (outer src = node IP, dst = the remote VTEP = the remote node's
        InternalIP, UDP 4789, VNI 4096, inner frame between the VTEP MACs) and sent through
        the root's own output path, so routing, gateway, hooks and the eth0 MTU apply to the
        outer packet; UDP 4789 received by the root is checked (VNI), decapsulated and fed
        back into the root as received on the VXLAN device.

Traffic between two pods of one node goes pod → root (PREROUTING, FORWARD, POSTROUTING) →
pod, like any other: kube-proxy's hooks and the policy slot see it.

Routes to a remote pod network are ``<cidr> via <remote node IP> dev <vxlan device>``: the
next hop *is* the VTEP, and the forwarding database maps it to the VTEP MAC.  (Linux
Flannel writes ``via 10.244.1.0 onlink`` plus a neighbour entry; the packet on the wire is
the same.)

Entry points take ``now``; nothing here reads a clock or does I/O.  The owner calls
:meth:`receive` with packets from the wire, :meth:`handle_timers` at :meth:`next_deadline`,
and after each of those (or when :attr:`on_output` fires: an app wrote on a pod's socket)
:meth:`pump`, which returns ``[(nic, via, pkt)]`` to send on the wire.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from agents.cni.base import CniError, CniPlugin, pod_mac, vtep_mac
from agents.cni.masquerade import Masquerade
from agents.netstack import LOOPBACK, NetStack, TcpConfig
from broker import packets as P

Packet = tuple[Any, ...]
Output = tuple[int, str, Packet]
# policy(pod, direction, pkt, now) -> pkt | None: sees every packet entering ("ingress") and
# leaving ("egress") a pod, on the host side of its veth, where Calico hooks its per-
# workload chains (cali-tw-* / cali-fw-*).  None (the default) costs one test per batch.
PolicyHook = Callable[["PodNet", str, Packet, float], "Packet | None"]

INGRESS = "ingress"
EGRESS = "egress"
FIRST_DEVICE_INDEX = 100        # interfaces the datapath adds; the wire NICs stay below
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"  # Calico's fixed host-side veth MAC (proxy ARP)
PUMP_ROUNDS = 10_000            # rounds per pump before yielding (a packet loop between stacks)
SPORT_CACHE_MAX = 4096
EPHEMERAL = (32768, 60999)      # VXLAN source ports: the kernel hashes the inner flow into this


class PodNet:
    """One pod's network namespace: its stack, addresses and the veth joining it to the root."""

    __slots__ = ("key", "os", "address", "ips", "stack", "veth", "veth_name", "_dp")

    def __init__(self, key: str, os: str, address: Any, stack: NetStack, veth: int, veth_name: str,
                 dp: NodeDatapath) -> None:
        self.key = key
        self.os = os
        self.address = address      # agents.cni.PodAddress
        self.ips: list[str] = address.ips
        self.stack = stack
        self.veth = veth
        self.veth_name = veth_name
        self._dp = dp

    @property
    def ip(self) -> str:
        return self.ips[0]

    def _wake(self) -> None:
        self._dp._wake_pod(self)

    def as_dict(self) -> dict[str, Any]:
        return {"pod": self.key, "os": self.os, "ips": list(self.ips),
                "addresses": list(self.address.addresses), "gateways": dict(self.address.gateways),
                "veth": self.veth_name, "veth_index": self.veth}


class _VxlanSocket:
    """The raw UDP 4789 socket of the VXLAN device (Linux: the vxlan driver's UDP socket)."""

    __slots__ = ("packet_received",)

    def __init__(self, dp: NodeDatapath) -> None:
        self.packet_received = dp._decap


class NodeDatapath:
    """A node's pods, veths, VXLAN device and masquerade around its root stack."""

    def __init__(self, root: NetStack, plugin: CniPlugin, node_ip: str, *,
                 pod_tcp: TcpConfig | None = None) -> None:
        self.root = root
        self.plugin = plugin
        self.node_ip = P.canonical_ip(node_ip, "node_ip")
        self.pod_tcp = pod_tcp
        self.policy: PolicyHook | None = None
        self.on_output: Callable[[], None] | None = None
        self.pods: dict[str, PodNet] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("vxlan_tx", "vxlan_tx_bytes", "vxlan_rx", "vxlan_rx_bytes", "vxlan_bad_vni",
             "vxlan_bad_mac", "vxlan_no_fdb", "vxlan_tx_errors", "no_pod", "policy_drops",
             "to_wire", "pumps"), 0)
        root.forwarding = True
        self._wire = frozenset(i for i in root.interfaces if i != LOOPBACK)
        self._next_index = max([FIRST_DEVICE_INDEX, *root.interfaces]) if root.interfaces else FIRST_DEVICE_INDEX
        self._free_indexes: list[int] = []
        self._veths: dict[int, PodNet] = {}
        self._by_ip: dict[str, PodNet] = {}
        self._pending: list[PodNet] = []
        self._pumping = False
        self._signalled = False
        self._remote: dict[str, str] = {}           # remote pod CIDR -> VTEP (node IP)
        self._remote_nodes: dict[str, tuple[str, list[str]]] = {}
        self._fdb: dict[str, tuple[str, str]] = {}  # VTEP -> (VTEP MAC, outer destination)
        self._sports: dict[tuple[str, str, int, int], int] = {}
        self._egress: dict[str, bool] = {}
        self.vni = plugin.vni
        self.vxlan_port = plugin.vxlan_port
        self.vtep_mac = plugin.vtep_mac(self.node_ip)
        self.vtep_address = plugin.vtep_address()
        self.vxlan_index = self._alloc_index()
        # Dual stack (Calico): the device also holds the node's IPv6 tunnel address, the source
        # of the routes to other nodes' IPv6 blocks; IPv6 pod traffic crosses the IPv4 underlay
        # in the same VXLAN (VNI 4096) as IPv4 (an L2 overlay carries either family).
        self.vtep_address_v6 = plugin.vtep_address_v6()
        vtep_addrs = [f"{self.vtep_address}/32"]
        if self.vtep_address_v6:
            vtep_addrs.append(f"{self.vtep_address_v6}/128")
        root.add_interface(self.vxlan_index, plugin.vxlan_device, self.vtep_mac, plugin.mtu, vtep_addrs)
        self.bridge_index: int | None = None
        self._host_src4 = self.node_ip
        bridge = plugin.bridge()
        if bridge is not None:
            self.bridge_index = self._alloc_index()
            root.add_interface(self.bridge_index, bridge[0], vtep_mac(bridge[1].split("/")[0]),
                               plugin.mtu, [bridge[1]])
            self._host_src4 = bridge[1].split("/")[0]
        root.on_output = self._notify
        self._vxlan_socket = root.udp_open(_VxlanSocket(self), ("0.0.0.0", plugin.vxlan_port), raw=True)
        self.masquerade = Masquerade([self.node_ip], plugin.masquerade_sources,
                                     plugin.masquerade_exceptions, egress=self._leaves_by_wire)
        self.masquerade.install(root)

    # --- pods -----------------------------------------------------------------------------------

    def add_pod(self, pod_key: str, os: str | None = None) -> PodNet:
        """CNI ADD: an address from the plugin's IPAM, the pod's stack and its veth, routes
        both ways.  The same pod again returns what it has."""
        have = self.pods.get(pod_key)
        if have is not None:
            return have
        os = os or self.plugin.os
        address = self.plugin.allocate(pod_key, os)
        try:
            return self._plumb(pod_key, os, address)
        except Exception:
            self.plugin.release(pod_key)
            raise

    def _plumb(self, pod_key: str, os: str, address: Any) -> PodNet:
        plugin = self.plugin
        stack = NetStack(pod_key, seed=f"{self.root.name}/{pod_key}/{address.ip}", tcp=self.pod_tcp)
        stack.add_interface(0, "eth0", pod_mac(address.ip), plugin.mtu, address.addresses)
        for version, gateway in address.gateways.items():
            stack.add_route("0.0.0.0/0" if version == 4 else "::/0", dev=0, via=gateway)
        veth = self._alloc_index()
        name = plugin.host_veth_name(pod_key)
        self.root.add_interface(veth, name, HOST_VETH_MAC, plugin.mtu)
        pod = PodNet(pod_key, os, address, stack, veth, name, self)
        for ip in pod.ips:
            if ":" in ip:
                # No IPv6 on the node: the veth's link-local gateway is the host's source, as
                # Calico gives the host side fe80::ecee:eeff:feee:eeee.
                gateway = address.gateways.get(6)
                if gateway:
                    self.root.add_address(veth, f"{gateway}/128")
                self.root.add_route(f"{ip}/128", dev=veth, src=gateway)
            else:
                self.root.add_route(f"{ip}/32", dev=veth, src=self._host_src4)
            self._by_ip[ip] = pod
        stack.on_output = pod._wake
        self.pods[pod_key] = pod
        self._veths[veth] = pod
        self._egress.clear()
        return pod

    def remove_pod(self, pod_key: str, now: float | None = None) -> list[str]:
        """CNI DEL: the pod's stack is closed (its connections reset, nothing sent), its veth
        and routes go, its addresses return to the IPAM.  Returns the released addresses."""
        pod = self.pods.pop(pod_key, None)
        if pod is None:
            return self.plugin.release(pod_key)
        pod.stack.on_output = None
        pod.stack.close(now)
        pod.stack.take_output()  # the namespace is gone: its last RSTs go nowhere
        self.root.remove_interface(pod.veth)
        del self._veths[pod.veth]
        self._free_indexes.append(pod.veth)
        for ip in pod.ips:
            if self._by_ip.get(ip) is pod:
                del self._by_ip[ip]
        if pod in self._pending:
            self._pending.remove(pod)
        self._egress.clear()
        return self.plugin.release(pod_key)

    def pod(self, pod_key: str) -> PodNet | None:
        return self.pods.get(pod_key)

    def pod_by_ip(self, ip: str) -> PodNet | None:
        return self._by_ip.get(ip)

    def _alloc_index(self) -> int:
        if self._free_indexes:
            return self._free_indexes.pop()
        self._next_index += 1
        return self._next_index

    # --- remote nodes -------------------------------------------------------------------------

    def set_remote_nodes(self, nodes: Iterable[tuple[str, str, Iterable[str]]]) -> dict[str, list[str]]:
        """The whole set of other nodes: ``[(name, InternalIP, pod CIDRs or blocks)]``
        (:meth:`CniPlugin.remote_nodes` builds it from Node objects).  Routes are changed
        by difference; returns ``{"added": [...], "removed": [...]}`` CIDRs.  IPv6 CIDRs (a
        dual-stack Calico cluster's /122 blocks) are routed over the same VXLAN device, next
        hop the remote node's IPv4 VTEP, source this node's IPv6 tunnel address; without one
        (no IPv6 on this node: Windows, or a single-stack plugin) they are left out."""
        local = set(self.plugin.local_cidrs())
        desired: dict[str, str] = {}
        names: dict[str, tuple[str, list[str]]] = {}
        for name, ip, cidrs in nodes:
            ip = P.canonical_ip(ip, f"nodes[{name}].ip")
            if ip == self.node_ip:
                continue
            kept = []
            for text in cidrs:
                net = ipaddress.ip_network(text, strict=False)
                cidr = str(net)
                if (net.version == 6 and not self.vtep_address_v6) or cidr in local:
                    continue
                if desired.get(cidr, ip) != ip:
                    raise CniError(f"nodes[{name}]: {cidr} is also claimed by {desired[cidr]}")
                desired[cidr] = ip
                kept.append(cidr)
            names[name] = (ip, kept)
        removed = [c for c, ip in self._remote.items() if desired.get(c) != ip]
        added = [c for c, ip in desired.items() if self._remote.get(c) != ip]
        vx = self.vxlan_index
        for cidr in removed:
            self.root.remove_route(cidr, dev=vx)
        for cidr in added:
            src = self.vtep_address_v6 if ":" in cidr else None
            self.root.add_route(cidr, dev=vx, via=desired[cidr], src=src)
        self._remote = desired
        self._remote_nodes = names
        self._fdb = {ip: (self.plugin.vtep_mac(ip), ip) for ip in set(desired.values())}
        self._egress.clear()
        return {"added": added, "removed": removed}

    def invalidate_routes(self) -> None:
        """Routes of the root stack changed outside the datapath: forget cached decisions."""
        self._egress.clear()

    def _leaves_by_wire(self, dst: str) -> bool:
        hit = self._egress.get(dst)
        if hit is None:
            route = self.root.route(dst)
            hit = route is not None and route["dev"] in self._wire
            if len(self._egress) >= SPORT_CACHE_MAX:
                self._egress.clear()
            self._egress[dst] = hit
        return hit

    # --- moving packets -------------------------------------------------------------------------

    def receive(self, nic: int, packets: Iterable[Packet], now: float) -> None:
        """Packets from the wire on ``nic`` (then :meth:`pump`)."""
        self.root.receive(nic, packets, now)

    def pump(self, now: float) -> list[Output]:
        """Move packets between the pod stacks and the root stack until quiet; returns what
        leaves on the wire, ``[(nic, via, pkt)]``."""
        out: list[Output] = []
        root = self.root
        self._pumping = True
        self.counters["pumps"] += 1
        try:
            for _ in range(PUMP_ROUNDS):
                if self._pending:
                    pending = self._pending
                    self._pending = []
                    for pod in pending:
                        sent = pod.stack.take_output()
                        if sent:
                            self._from_pod(pod, sent, now)
                batch = root.take_output()
                if batch:
                    self._from_root(batch, out, now)
                elif not self._pending:
                    break
        finally:
            self._pumping = False
            self._signalled = False
        self.counters["to_wire"] += len(out)
        return out

    def _from_pod(self, pod: PodNet, sent: list[Output], now: float) -> None:
        policy = self.policy
        if policy is None:
            pkts = [entry[2] for entry in sent]
        else:
            pkts = []
            for entry in sent:
                pkt = policy(pod, EGRESS, entry[2], now)
                if pkt is None:
                    self.counters["policy_drops"] += 1
                else:
                    pkts.append(pkt)
        if pkts:
            self.root.receive(pod.veth, pkts, now)

    def _from_root(self, batch: list[Output], out: list[Output], now: float) -> None:
        wire = self._wire
        vx = self.vxlan_index
        veths = self._veths
        policy = self.policy
        to_pods: dict[int, list[Packet]] = {}
        for entry in batch:
            dev = entry[0]
            if dev in wire:
                out.append(entry)
            elif dev == vx:
                self._encap(entry[1], entry[2], now)
            else:
                pod = veths.get(dev)
                if pod is None:  # the bridge: an address of the pod range nobody holds
                    self.counters["no_pod"] += 1
                    continue
                pkt = entry[2]
                if policy is not None:
                    checked = policy(pod, INGRESS, pkt, now)
                    if checked is None:
                        self.counters["policy_drops"] += 1
                        continue
                    pkt = checked
                to_pods.setdefault(dev, []).append(pkt)
        for dev, pkts in to_pods.items():
            veths[dev].stack.receive(0, pkts, now)

    def _encap(self, via: str, inner: Packet, now: float) -> None:
        peer = self._fdb.get(via)
        if peer is None:
            self.counters["vxlan_no_fdb"] += 1
            return
        mac, remote = peer
        outer = P.vxlan(self.node_ip, remote, self._sport(inner), self.vni, self.vtep_mac, mac, inner)
        if self.root.output_packet(outer, now):
            self.counters["vxlan_tx_errors"] += 1
            return
        self.counters["vxlan_tx"] += 1
        self.counters["vxlan_tx_bytes"] += outer[8]

    def _sport(self, inner: Packet) -> int:
        """The outer source port: a hash of the inner flow (RFC 7348 section 5, for ECMP)."""
        key = (inner[0], inner[1], inner[4], inner[5])
        port = self._sports.get(key)
        if port is None:
            lo, hi = EPHEMERAL
            port = lo + zlib.crc32(repr(key).encode()) % (hi - lo + 1)
            if len(self._sports) >= SPORT_CACHE_MAX:
                self._sports.clear()
            self._sports[key] = port
        return port

    def _decap(self, pkt: Packet, now: float) -> None:
        """UDP 4789 reached the root stack: check the VNI and the inner frame's destination
        MAC, then the inner packet enters the root as received on the VXLAN device."""
        if pkt[6] != self.vni:
            self.counters["vxlan_bad_vni"] += 1
            return
        _, dst_mac, inner = pkt[7]
        if dst_mac != self.vtep_mac:
            self.counters["vxlan_bad_mac"] += 1
            return
        self.counters["vxlan_rx"] += 1
        self.counters["vxlan_rx_bytes"] += pkt[8]
        self.root.receive(self.vxlan_index, [inner], now)

    def _wake_pod(self, pod: PodNet) -> None:
        self._pending.append(pod)
        self._notify()

    def _notify(self) -> None:
        if self._pumping or self._signalled:
            return
        self._signalled = True
        if self.on_output is not None:
            self.on_output()

    # --- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadline = self.root.next_deadline()
        for pod in self.pods.values():
            d = pod.stack.next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        d = self.masquerade.next_deadline()
        if d is not None and (deadline is None or d < deadline):
            deadline = d
        return deadline

    def handle_timers(self, now: float) -> None:
        """Fire what is due in every stack and the NAT table (then :meth:`pump`)."""
        d = self.root.next_deadline()
        if d is not None and d <= now:
            self.root.handle_timers(now)
        for pod in list(self.pods.values()):
            d = pod.stack.next_deadline()
            if d is not None and d <= now:
                pod.stack.handle_timers(now)
        self.masquerade.expire(now)

    # --- introspection ------------------------------------------------------------------------

    def remote_routes(self) -> dict[str, str]:
        """Remote pod CIDR -> VTEP (the remote node's address)."""
        return dict(self._remote)

    def stats(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin.describe(),
            "node_ip": self.node_ip,
            "vtep": {"device": self.plugin.vxlan_device, "address": self.vtep_address, "mac": self.vtep_mac,
                     "vni": self.vni, "port": self.vxlan_port,
                     **({"address_v6": self.vtep_address_v6} if self.vtep_address_v6 else {})},
            "pods": {key: pod.as_dict() for key, pod in self.pods.items()},
            "remote": {name: {"ip": ip, "cidrs": cidrs} for name, (ip, cidrs) in self._remote_nodes.items()},
            "counters": dict(self.counters),
            "masquerade": self.masquerade.stats(),
            "root": self.root.stats(),
        }

    def close(self, now: float | None = None) -> None:
        for key in list(self.pods):
            pod = self.pods[key]
            pod.stack.on_output = None
            pod.stack.close(now)
        self._vxlan_socket.close()
