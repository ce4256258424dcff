"""Scenarios the benchmarks build: the default scenario's networks with one cluster."""

from __future__ import annotations

# The default scenario's networks and cluster with one Linux pool of {nodes} nodes, no clients
# and no DNS VM: the node IP pool (120 addresses) holds up to 30 nodes + the control plane + the
# LB VM + 5 upgrade spares (FACTS.md sizing) and more.
_ONE_CLUSTER = """
name: {name}
time_scale: {time_scale}
networks:
  - name: aks-net
    vswitchName: External
    ipAddressPrefix: 172.16.0.0/24
    gateway: 172.16.0.1
    dnsServers: [172.16.0.2]
    vlanID: 0
    k8sNodeIpPoolStart: 172.16.0.20
    k8sNodeIpPoolEnd: 172.16.0.139
    vipPoolStart: 172.16.0.150
    vipPoolEnd: 172.16.0.199
  - name: internet
    ipAddressPrefix: 203.0.113.0/24
    gateway: 203.0.113.1
    external: true
management:
  network: aks-net
  cloudAgentIp: 172.16.0.5
clusters:
  - name: cluster1
    vnet: aks-net
    primaryNetworkPlugin: calico
    controlPlaneNodeCount: 1
    loadBalancerSku: HAProxy
    nodeMaxPodCount: 110
    nodePools:
      - {{name: cluster1-linux, osType: linux, nodeCount: {nodes}}}
"""


def one_cluster(nodes: int, *, time_scale: float, name: str) -> str:
    """The scenario YAML: one Calico cluster of ``nodes`` Linux nodes."""
    return _ONE_CLUSTER.format(nodes=nodes, time_scale=time_scale, name=name)
