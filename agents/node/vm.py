"""The ``node`` VM kind: a plain VM plus a kubelet talking to ``apiserver`` (``VIP:6443``).

Config keys (docs/contracts-control-plane.md): ``cluster``, ``pool``, ``os`` (linux|windows),
``apiserver``, ``max_pods``, ``time_scale``; optional ``vm_size``.  Windows nodes run the same
kubelet with ``kubernetes.io/os: windows`` and the Windows nodeInfo.
"""

from __future__ import annotations

from typing import Any

from agents.timers import Timers
from agents.vm.runtime import VM, ConfigError, VMConfig, register_kind

from .kubelet import Kubelet, KubeletConfig, KubeletConfigError, client_timeout, user_agent


@register_kind("node")
class NodeVM(VM):
    def __init__(self, config: VMConfig) -> None:
        super().__init__(config)
        self.kubelet_config: KubeletConfig | None = None
        self.kubelet: Kubelet | None = None

    async def start(self) -> str:
        # Validated here, not in __init__: a bad key becomes the readiness line's error.
        try:
            self.kubelet_config = KubeletConfig.parse(self.config.name, self.config.raw)
        except KubeletConfigError as exc:
            raise ConfigError(str(exc)) from None
        return await super().start()

    def node_ip(self) -> str:
        """The first address of the first NIC (static, or leased over DHCP)."""
        for ips in self._claimed.values():
            if ips:
                return ips[0]
        for nic in self.config.nics:
            if nic.ips:
                return nic.ips[0]
        return ""

    async def start_services(self) -> None:
        from agents.kube.client import KubeClient

        await super().start_services()
        cfg = self.kubelet_config
        assert cfg is not None
        client = KubeClient(self, cfg.apiserver_host, cfg.apiserver_port,
                            timeout=client_timeout(Timers(cfg.time_scale)), user_agent=user_agent(cfg.os))
        self.kubelet = Kubelet(cfg, client, self.node_ip)
        self.kubelet.start()

    async def stop_services(self) -> None:
        if self.kubelet is not None:
            await self.kubelet.stop()
        await super().stop_services()

    def mgmt_handlers(self) -> dict[str, Any]:
        return {**super().mgmt_handlers(), "kubelet": self._m_kubelet}

    def _m_kubelet(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.kubelet.stats() if self.kubelet is not None else {"registered": False}

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["kubelet"] = self._m_kubelet({})
        return out
