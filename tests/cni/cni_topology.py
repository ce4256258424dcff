"""Two node datapaths and two VMs over the in-memory fabric, on a manual clock.

    segment "dc" 172.16.0.0/24 (MTU 1500)            segment "other" 172.17.0.0/24
      node0 172.16.0.11   node1 172.16.0.12            vm-other 172.17.0.50
      vm-same 172.16.0.50   router 172.16.0.1 ─────── router 172.17.0.1

The router forwards between the two segments and has no route to the pod CIDR, like the
datacenter router of the real product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from agents.cni import BlockAllocator, create_cni
from agents.netstack import NetStack
from agents.netstack.fakenet import FakeNet
from agents.node.datapath import NodeDatapath, PodNet

NODE_SUBNET = "172.16.0.0/24"
NODES = {"node0": "172.16.0.11", "node1": "172.16.0.12"}
FLANNEL_CIDRS = {"node0": "10.244.0.0/24", "node1": "10.244.1.0/24"}
VM_SAME = "172.16.0.50"
VM_OTHER = "172.17.0.50"


class DatapathHost:
    """What FakeNet needs of a stack, backed by a datapath: each collect pumps it."""

    def __init__(self, net: FakeNet, dp: NodeDatapath) -> None:
        self.net = net
        self.dp = dp
        self.name = dp.root.name
        self.interfaces = dp.root.interfaces
        self.drops = dp.root.drops

    @property
    def last_error(self) -> BaseException | None:
        return self.dp.root.last_error

    def receive(self, nic: int, packets: Any, now: float) -> None:
        self.dp.receive(nic, packets, now)

    def take_output(self) -> list[tuple[int, str, Any]]:
        out = self.dp.pump(self.net.now)
        for pod in self.dp.pods.values():  # FakeNet's strictness, for the pod stacks too
            if pod.stack.drops["bad_packet"]:
                raise AssertionError(f"{pod.key}: {pod.stack.last_error!r}") from pod.stack.last_error
        return out

    def next_deadline(self) -> float | None:
        return self.dp.next_deadline()

    def handle_timers(self, now: float) -> None:
        self.dp.handle_timers(now)


def node_object(name: str, ip: str, pod_cidr: str | None = None) -> dict[str, Any]:
    spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {}
    return {"metadata": {"name": name}, "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]}}


def plain_host(name: str, ip: str, gateway: str) -> NetStack:
    stack = NetStack(name)
    stack.add_interface(0, "eth0", "02:00:00:00:00:" + ip.rsplit(".", 1)[1][-2:].zfill(2), 1500, [f"{ip}/24"])
    stack.add_route("0.0.0.0/0", via=gateway)
    return stack


@dataclass
class Cluster:
    net: FakeNet
    plugin: str
    dps: dict[str, NodeDatapath]
    router: NetStack
    vm_same: NetStack
    vm_other: NetStack
    allocator: BlockAllocator | None
    wire: list[tuple[float, str, int, str, Any]] = field(default_factory=list)

    def sync_nodes(self) -> None:
        """What each node's agent does on a Node watch event: routes from Node objects."""
        objs = [node_object(n, ip, FLANNEL_CIDRS[n] if self.plugin == "flannel" else None)
                for n, ip in NODES.items()]
        for dp in self.dps.values():
            dp.set_remote_nodes(dp.plugin.remote_nodes(objs))

    def pod(self, node: str, key: str) -> PodNet:
        pod = self.dps[node].add_pod(key)
        self.sync_nodes()
        return pod


def build_cluster(plugin: str, *, exceptions: list[str] | None = None,
                  nat_outgoing: bool = True, oses: dict[str, str] | None = None,
                  pools: list[str] | None = None) -> Cluster:
    net = FakeNet(seed=7)
    net.add_segment("dc", mtu=1500)
    net.add_segment("other", mtu=1500)
    router = NetStack("router")
    router.add_interface(0, "eth0", "02:00:00:00:01:01", 1500, ["172.16.0.1/24"])
    router.add_interface(1, "eth1", "02:00:00:00:01:02", 1500, ["172.17.0.1/24"])
    router.forwarding = True
    net.attach(router, 0, "dc")
    net.attach(router, 1, "other")
    vm_same = plain_host("vm-same", VM_SAME, "172.16.0.1")
    vm_other = plain_host("vm-other", VM_OTHER, "172.17.0.1")
    net.attach(vm_same, 0, "dc")
    net.attach(vm_other, 0, "other")
    allocator = BlockAllocator(pools or ["10.244.0.0/16"]) if plugin == "calico" else None
    dps = {}
    for name, ip in NODES.items():
        root = plain_host(name, ip, "172.16.0.1")
        kwargs: dict[str, Any] = {"node_name": name, "node_ip": ip, "node_subnet": NODE_SUBNET,
                                  "os": (oses or {}).get(name, "linux")}
        if exceptions is not None:
            kwargs["masquerade_exceptions"] = exceptions
        if plugin == "flannel":
            kwargs["pod_cidr"] = FLANNEL_CIDRS[name]
        else:
            kwargs["allocator"] = allocator
            kwargs["nat_outgoing"] = nat_outgoing
        dp = NodeDatapath(root, create_cni(plugin, **kwargs), ip)
        dps[name] = dp
        net.attach(cast(NetStack, DatapathHost(net, dp)), 0, "dc")
    cluster = Cluster(net, plugin, dps, router, vm_same, vm_other, allocator)
    net.taps.append(lambda now, src, nic, via, pkt: cluster.wire.append((now, src, nic, via, pkt)))
    cluster.sync_nodes()
    return cluster
