"""Calico's block IPAM on a dual-stack cluster: a Linux node claims an IPv4 and an IPv6
block (one write), a Windows node an IPv4 block only; pods get both families on Linux."""

from __future__ import annotations

import uvloop
from test_pods import FakeConfigMaps

from agents.cni import BlockAllocator, create_cni
from agents.node.kubelet import CalicoIpamSync

POOLS = ["10.244.0.0/16", "fd00:10:244::/56"]


def test_linux_claims_both_families_windows_ipv4_only() -> None:
    async def main() -> None:
        store = FakeConfigMaps()
        lin = CalicoIpamSync(store, "lin", allocator=BlockAllocator(POOLS))
        win = CalicoIpamSync(store, "win", windows=True, allocator=BlockAllocator(POOLS))
        assert lin.versions() == [4, 6] and win.versions() == [4]
        await lin.ensure_capacity(1)
        assert lin.allocator.blocks_of("lin") == ["10.244.0.0/26", "fd00:10:244::/122"] and store.writes == 1
        await win.ensure_capacity(1)
        assert win.allocator.blocks_of("win") == ["10.244.0.64/26"]
        assert win.allocator.blocks_of("lin", 6) == ["fd00:10:244::/122"]  # learned from the ConfigMap
        plugin = create_cni("calico", node_name="lin", node_ip="172.16.0.11", allocator=lin.allocator)
        assert (plugin.vtep_address(), plugin.vtep_address_v6()) == ("10.244.0.0", "fd00:10:244::")
        addr = plugin.allocate("default/p")
        assert addr.ips == ["10.244.0.1", "fd00:10:244::1"] and addr.ip == "10.244.0.1"
        # a full IPv6 block makes the next ensure_capacity claim another IPv6 block only
        for i in range(62):
            lin.allocator.allocate("lin", f"p{i}", 6)
        assert lin.free(6) == 0 and lin.free(4) > 0
        await lin.ensure_capacity(1)
        assert lin.allocator.blocks_of("lin", 6) == ["fd00:10:244::/122", "fd00:10:244::40/122"]
        assert lin.allocator.blocks_of("lin", 4) == ["10.244.0.0/26"]
    uvloop.run(main())
