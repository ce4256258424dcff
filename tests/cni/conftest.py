"""Fixtures over the topology of cni_topology.py (two node datapaths, two VMs, a router)."""

from __future__ import annotations

import pytest
from cni_topology import Cluster, build_cluster


@pytest.fixture(params=["flannel", "calico"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return build_cluster(request.param)
