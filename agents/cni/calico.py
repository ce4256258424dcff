"""Calico with VXLAN, as AKS-HCI configures it, and Calico's block IPAM.

* IPAM (libcalico-go ``lib/ipam``): the IP pool (10.244.0.0/16 on AKS-HCI) is cut into
  blocks of /26 (IPv6: /122).  A node claims a block (the block's *affinity* is
  ``host:<node>``) and hands out its addresses; when the node's blocks are full it claims a
  new one.  Inside a block the free ordinals form a queue: an address is taken from the
  front and a released one goes to the back, so it is not reused at once.  When a Windows
  node claims a block it assigns "the first three IPs in each block and the final IP for
  internal purposes" (Calico's IPReservation reference; ``HostReservedAttr{StartOfBlock: 3,
  EndOfBlock: 1}`` with handle ``windows-reserved-ipam-handle``): the network address, the
  HNS network's gateway (.1), the next one (.2) and the last — 60 left for pods.
* The VXLAN tunnel address of a Linux node is an IPAM allocation too (handle
  ``vxlan-tunnel-addr-<node>``), taken from its first block; a Windows node's VTEP uses the
  block's reserved gateway address.
* VXLAN VNI 4096 on UDP 4789, MTU 1450; routes per block (``<block> via <VTEP> dev
  vxlan.calico``); pods get a /32 (Linux) behind ``169.254.1.1`` — Calico's link-local
  gateway answered by proxy ARP on the host side of the veth (``cali`` + 11 hex of the
  SHA-1 of ``<namespace>.<pod>``).
* ``natOutgoing`` (on by default): traffic from a pool with ``natOutgoing`` to a destination
  outside *all* pools is masqueraded — so a VM on any network sees the node's address.
* Policy is enforced by Calico (step 5: the datapath's ``policy`` slot); IPv6 pools are
  optional and Linux only (Calico for Windows has no IPv6).

:class:`BlockAllocator` is cluster-wide state, deterministic (the lowest free block, where
real Calico starts at a random one) and sans-IO; the node process persists it through the
API server with :meth:`BlockAllocator.claimed_blocks` / :meth:`BlockAllocator.load`.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .base import CLUSTER_CIDR, CniError, CniPlugin, IpamExhausted, PodAddress, register_cni, short_hash

BLOCK_SIZE = {4: 26, 6: 122}                 # IPPool.spec.blockSize defaults
WINDOWS_RESERVED_HANDLE = "windows-reserved-ipam-handle"
WINDOWS_RESERVED_START = 3                   # HostReservedAttr.StartOfBlock
WINDOWS_RESERVED_END = 1                     # HostReservedAttr.EndOfBlock
LINK_LOCAL_GATEWAY = {4: "169.254.1.1", 6: "fe80::ecee:eeff:feee:eeee"}
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Block:
    """One IPAM block: its CIDR, affinity, and who holds each ordinal."""

    __slots__ = ("cidr", "net", "host", "windows", "handles", "unallocated")

    def __init__(self, net: IPNetwork, host: str, windows: bool) -> None:
        self.net = net
        self.cidr = str(net)
        self.host = host
        self.windows = windows
        self.handles: list[str | None] = [None] * net.num_addresses
        self.unallocated: deque[int] = deque(range(net.num_addresses))
        if windows:
            size = net.num_addresses
            for ordinal in (*range(WINDOWS_RESERVED_START), *range(size - WINDOWS_RESERVED_END, size)):
                self.handles[ordinal] = WINDOWS_RESERVED_HANDLE
                self.unallocated.remove(ordinal)

    def ip(self, ordinal: int) -> str:
        return str(self.net.network_address + ordinal)

    def take(self, handle: str) -> str | None:
        if not self.unallocated:
            return None
        ordinal = self.unallocated.popleft()
        self.handles[ordinal] = handle
        return self.ip(ordinal)

    def free(self, ip: str) -> None:
        ordinal = int(ipaddress.ip_address(ip)) - int(self.net.network_address)
        if self.handles[ordinal] is not None:
            self.handles[ordinal] = None
            self.unallocated.append(ordinal)

    def in_use(self) -> int:
        return sum(1 for h in self.handles if h is not None and h != WINDOWS_RESERVED_HANDLE)

    def as_dict(self) -> dict[str, Any]:
        """Close to Calico's IPAMBlock spec (handles inline instead of attribute indexes)."""
        return {"cidr": self.cidr, "affinity": f"host:{self.host}", "windows": self.windows,
                "allocations": list(self.handles), "unallocated": list(self.unallocated)}


class BlockAllocator:
    """Calico IPAM over one or more pools, shared by every node of a cluster."""

    def __init__(self, pools: Sequence[str] = (CLUSTER_CIDR,), *,
                 block_size: Mapping[int, int] | None = None) -> None:
        sizes = dict(BLOCK_SIZE if block_size is None else block_size)
        self.pools: list[IPNetwork] = []
        self._block_prefix: dict[str, int] = {}
        for text in pools:
            pool = ipaddress.ip_network(text)
            prefix = sizes.get(pool.version, BLOCK_SIZE[pool.version])
            if prefix < pool.prefixlen:
                raise CniError(f"pools: {pool} is smaller than one /{prefix} block")
            if pool.version == 4 and pool.overlaps(ipaddress.ip_network("169.254.0.0/16")):
                raise CniError(f"pools: {pool} overlaps the link-local range")
            self.pools.append(pool)
            self._block_prefix[str(pool)] = prefix
        if not self.pools:
            raise CniError("pools: at least one IP pool is needed")
        self._blocks: dict[str, Block] = {}
        self._affinity: dict[str, list[str]] = {}            # node -> block CIDRs, in claim order
        self._handles: dict[str, list[tuple[str, str]]] = {}  # handle -> [(block cidr, ip)]

    # --- queries --------------------------------------------------------------------------------

    def pool_cidrs(self, version: int | None = None) -> list[str]:
        return [str(p) for p in self.pools if version is None or p.version == version]

    def has_version(self, version: int) -> bool:
        return any(p.version == version for p in self.pools)

    def blocks_of(self, node: str, version: int | None = None) -> list[str]:
        return [c for c in self._affinity.get(node, ())
                if version is None or self._blocks[c].net.version == version]

    def affinities(self) -> dict[str, str]:
        """block CIDR -> node, as Calico's BlockAffinity objects say."""
        return {cidr: b.host for cidr, b in self._blocks.items()}

    def addresses(self, handle: str) -> list[str]:
        return [ip for _, ip in self._handles.get(handle, ())]

    def block(self, cidr: str) -> Block:
        return self._blocks[cidr]

    # --- blocks ---------------------------------------------------------------------------------

    def claim_block(self, node: str, version: int = 4, *, windows: bool = False) -> str:
        """Give ``node`` the affinity of the lowest free block of a pool of ``version``."""
        for pool in self.pools:
            if pool.version != version:
                continue
            prefix = self._block_prefix[str(pool)]
            size = 1 << (pool.max_prefixlen - prefix)
            base = int(pool.network_address)
            for i in range(pool.num_addresses // size):
                net = ipaddress.ip_network((base + i * size, prefix))
                cidr = str(net)
                if cidr not in self._blocks:
                    self._blocks[cidr] = Block(net, node, windows)
                    self._affinity.setdefault(node, []).append(cidr)
                    return cidr
        raise IpamExhausted(f"ipam: no free /{BLOCK_SIZE[version]} block left in the IPv{version} "
                            f"pools {', '.join(self.pool_cidrs(version))}")

    def ensure_block(self, node: str, version: int = 4, *, windows: bool = False) -> str:
        """The node's first block of ``version``, claimed if it has none (EnsureBlock)."""
        have = self.blocks_of(node, version)
        return have[0] if have else self.claim_block(node, version, windows=windows)

    def release_node(self, node: str) -> list[str]:
        """The node is gone: its blocks (and every address in them) return to the pool."""
        cidrs = self._affinity.pop(node, [])
        for cidr in cidrs:
            block = self._blocks.pop(cidr)
            for handle in {h for h in block.handles if h and h != WINDOWS_RESERVED_HANDLE}:
                left = [(c, ip) for c, ip in self._handles.get(handle, ()) if c != cidr]
                if left:
                    self._handles[handle] = left
                else:
                    self._handles.pop(handle, None)
        return cidrs

    # --- addresses ------------------------------------------------------------------------------

    def allocate(self, node: str, handle: str, version: int = 4, *, windows: bool = False) -> str:
        """An address for ``handle`` from ``node``'s blocks (a new block when they are full);
        the same one again if the handle already holds one of that version."""
        if handle == WINDOWS_RESERVED_HANDLE:
            raise CniError(f"handle: {handle} is reserved")
        for cidr, held in self._handles.get(handle, ()):
            if self._blocks[cidr].net.version == version:
                return held
        for cidr in self.blocks_of(node, version):
            ip = self._blocks[cidr].take(handle)
            if ip is not None:
                return self._record(handle, cidr, ip)
        # Real Calico may borrow from another node's block when the pool has no free block
        # (strictAffinity false); here the pool running out is an error.
        cidr = self.claim_block(node, version, windows=windows)
        ip = self._blocks[cidr].take(handle)
        if ip is None:  # a block too small for its reservations
            raise IpamExhausted(f"ipam: block {cidr} has no assignable address")
        return self._record(handle, cidr, ip)

    def _record(self, handle: str, cidr: str, ip: str) -> str:
        self._handles.setdefault(handle, []).append((cidr, ip))
        return ip

    def release(self, handle: str) -> list[str]:
        """Release every address of ``handle`` (Calico releases by handle); blocks stay
        affine to their node, as they do in Calico until the node is removed."""
        out = []
        for cidr, ip in self._handles.pop(handle, ()):
            block = self._blocks.get(cidr)
            if block is not None:
                block.free(ip)
            out.append(ip)
        return out

    # --- persistence ----------------------------------------------------------------------------

    def claimed_blocks(self) -> list[dict[str, Any]]:
        return [b.as_dict() for b in self._blocks.values()]

    def load(self, blocks: Iterable[Mapping[str, Any]]) -> None:
        """Replace the state with ``claimed_blocks()`` output (from the API server)."""
        self._blocks.clear()
        self._affinity.clear()
        self._handles.clear()
        for data in blocks:
            net = ipaddress.ip_network(data["cidr"])
            host = str(data["affinity"]).removeprefix("host:")
            block = Block(net, host, bool(data.get("windows", False)))
            block.handles = list(data["allocations"])
            block.unallocated = deque(data["unallocated"])
            if len(block.handles) != net.num_addresses:
                raise CniError(f"blocks[{block.cidr}].allocations: expected {net.num_addresses} entries")
            self._blocks[block.cidr] = block
            self._affinity.setdefault(host, []).append(block.cidr)
            for ordinal, handle in enumerate(block.handles):
                if handle and handle != WINDOWS_RESERVED_HANDLE:
                    self._handles.setdefault(handle, []).append((block.cidr, block.ip(ordinal)))

    def stats(self) -> dict[str, Any]:
        return {cidr: {"affinity": b.host, "in_use": b.in_use(), "free": len(b.unallocated)}
                for cidr, b in self._blocks.items()}


@register_cni
class CalicoPlugin(CniPlugin):
    name = "calico"
    vxlan_device = "vxlan.calico"
    supports_policy = True
    supports_ipv6 = True

    def __init__(self, *, allocator: BlockAllocator | None = None, nat_outgoing: bool = True,
                 **kwargs: Any) -> None:
        cluster = kwargs.get("cluster_cidr", CLUSTER_CIDR)
        self.allocator = allocator if allocator is not None else BlockAllocator([cluster])
        self.nat_outgoing = nat_outgoing
        super().__init__(**kwargs)
        self._vtep: str | None = None
        self._vtep6: str | None = None

    @property
    def windows(self) -> bool:
        return self.os == "windows"

    def default_exceptions(self) -> list[str]:
        return self.allocator.pool_cidrs()  # "outside of all Calico IP pools"

    @property
    def masquerade_sources(self) -> list[str]:
        return self.allocator.pool_cidrs() if self.nat_outgoing else []

    def _versions(self, os: str | None) -> list[int]:
        windows = (os or self.os) == "windows"
        # Calico for Windows has no IPv6 / dual stack: IPv6 pods are Linux-only (FACTS.md).
        return [v for v in (4, 6) if self.allocator.has_version(v) and not (v == 6 and windows)]

    def allocate(self, pod_key: str, os: str | None = None) -> PodAddress:
        windows = (os or self.os) == "windows"
        addresses = []
        gateways: dict[int, str] = {}
        for version in self._versions(os):
            ip = self.allocator.allocate(self.node_name, pod_key, version, windows=windows)
            if windows:  # HNS: the pod sits on the block's subnet behind its .1 gateway
                block = self._block_of(ip)
                addresses.append(f"{ip}/{block.net.prefixlen}")
                gateways[version] = block.ip(1)
            else:
                addresses.append(f"{ip}/{32 if version == 4 else 128}")
                gateways[version] = LINK_LOCAL_GATEWAY[version]
        if not addresses:
            raise CniError("pools: no IP pool for this node's pods")
        return PodAddress(addresses=tuple(addresses), gateways=gateways)

    def _block_of(self, ip: str) -> Block:
        addr = ipaddress.ip_address(ip)
        for cidr in self.allocator.blocks_of(self.node_name):
            block = self.allocator.block(cidr)
            if addr in block.net:
                return block
        raise CniError(f"ip: {ip} is in no block of node {self.node_name}")

    def release(self, pod_key: str) -> list[str]:
        return self.allocator.release(pod_key)

    def local_cidrs(self) -> list[str]:
        return self.allocator.blocks_of(self.node_name)

    def vtep_address(self) -> str:
        if self._vtep is None:
            if self.windows:
                block = self.allocator.block(self.allocator.ensure_block(self.node_name, 4, windows=True))
                self._vtep = block.ip(1)
            else:
                self._vtep = self.allocator.allocate(self.node_name, f"vxlan-tunnel-addr-{self.node_name}", 4)
        return self._vtep

    def vtep_address_v6(self) -> str | None:
        """The IPv6 address of the VXLAN device (Calico's ``IPv6VXLANTunnelAddr``, an IPAM
        allocation with handle ``vxlan-v6-tunnel-addr-<node>``): the source of the routes to
        other nodes' IPv6 blocks.  None without an IPv6 pool, and on Windows."""
        if self.windows or not self.allocator.has_version(6):
            return None
        if self._vtep6 is None:
            self._vtep6 = self.allocator.allocate(self.node_name, f"vxlan-v6-tunnel-addr-{self.node_name}", 6)
        return self._vtep6

    def host_veth_name(self, pod_key: str) -> str:
        namespace, _, pod = pod_key.rpartition("/")
        return "cali" + short_hash(f"{namespace or 'default'}.{pod}", 11)

    def remote_cidrs(self, node: Mapping[str, Any]) -> list[str]:
        """Routes per block: the blocks affine to that node (Calico's BlockAffinity)."""
        return self.allocator.blocks_of(node.get("metadata", {}).get("name", ""))
