"""CNI plugins (sans-IO): the base class and registry, Flannel, Calico, and the masquerade rule.

``create_cni("flannel" | "calico", node_name=..., node_ip=..., node_subnet=..., ...)`` gives a
plugin for one node; :class:`agents.node.datapath.NodeDatapath` makes it real.  See
docs/contracts-pod-network.md.
"""

from .base import (
    CLUSTER_CIDR,
    POD_MTU,
    SERVICE_CIDR,
    VXLAN_PORT,
    VXLAN_VNI,
    CniError,
    CniPlugin,
    IpamExhausted,
    PodAddress,
    cni_plugin,
    cni_plugins,
    create_cni,
    node_internal_ip,
    register_cni,
)
from .calico import WINDOWS_RESERVED_HANDLE, BlockAllocator, CalicoPlugin
from .flannel import RETIRED_WARNING, FlannelPlugin
from .masquerade import Masquerade, SnatTable

__all__ = [
    "CLUSTER_CIDR", "POD_MTU", "RETIRED_WARNING", "SERVICE_CIDR", "VXLAN_PORT", "VXLAN_VNI",
    "WINDOWS_RESERVED_HANDLE", "BlockAllocator", "CalicoPlugin", "CniError", "CniPlugin",
    "FlannelPlugin", "IpamExhausted", "Masquerade", "PodAddress", "SnatTable", "cni_plugin",
    "cni_plugins", "create_cni", "node_internal_ip", "register_cni",
]
