"""VM kind ``haproxy``: the load-balancer VM of a workload cluster (HAProxy + keepalived).

On top of a plain VM it runs:

* HAProxy (:class:`~.proxy.TcpProxy`): ``mode tcp`` frontends on the cluster's VIPs;
* the lbagent (:class:`~.lbagent.LbAgent`) on ``0.0.0.0:46000``, through which MOC programs it;
* keepalived's part: every VIP of the running config is claimed on the first NIC (so the
  VM receives traffic for it) and re-announced every ``keepalived_advert_int`` (scaled), as
  keepalived's gratuitous ARPs do; a VIP removed from the config is released.

The applied config is kept on the VM's disk (``<state_dir>/haproxy.json`` and the rendered
``haproxy.cfg``; ``state_dir`` defaults to ``<run_dir>/disks/<vm>``), so a VM restarted after
a crash serves again before MOC re-programs it, as a rebooted LB VM would.

Config keys (besides the plain VM's): ``cluster`` (str), ``time_scale`` (number > 0),
``state_dir`` (optional).  Management verbs: ``lb_stats`` -> ``{csv, rows}``, ``lb_config`` ->
``{cfg, config}``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from agents import mgmt
from agents.timers import Timers
from agents.vm.runtime import VM, ConfigError, VMConfig, register_kind

from .core import Defaults, LBConfig, LBConfigError
from .lbagent import LBAGENT_PORT, LbAgent
from .proxy import ApplyError, TcpProxy

log = logging.getLogger("hcinet.haproxy.vm")

CONFIG_FILE = "haproxy.json"
CFG_FILE = "haproxy.cfg"


def defaults_for(timers: Timers) -> Defaults:
    """HAProxy's defaults under a ``time_scale``: ``inter 2s``, ``timeout connect 5s``, the 1 s
    retry turn-around."""
    return Defaults(inter=timers.haproxy_check_inter, timeout_connect=timers.scaled(5.0),
                    turnaround=timers.scaled(1.0))


@register_kind("haproxy")
class HAProxyVM(VM):
    def __init__(self, config: VMConfig) -> None:
        super().__init__(config)
        raw = config.raw
        cluster = raw.get("cluster", "")
        if not isinstance(cluster, str):
            raise ConfigError(f"cluster: expected str, got {type(cluster).__name__}")
        scale = raw.get("time_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ConfigError(f"time_scale: expected a number > 0, got {scale!r}")
        state_dir = raw.get("state_dir") or os.path.join(config.run_dir, "disks", config.name)
        if not isinstance(state_dir, str):
            raise ConfigError(f"state_dir: expected str, got {type(state_dir).__name__}")
        if not config.nics:
            raise ConfigError("nics: the load-balancer VM needs a NIC for its VIPs")
        self.cluster = cluster
        self.timers = Timers(float(scale))
        self.defaults = defaults_for(self.timers)
        self.state_dir = Path(state_dir)
        self.vip_nic = 0
        self.proxy: TcpProxy | None = None
        self.agent: LbAgent | None = None
        self.http: Any = None

    # -- services --

    async def start_services(self) -> None:
        from agents.vm.http import serve_http

        await super().start_services()
        self.proxy = TcpProxy(self, self.defaults, vips=self)
        self.agent = LbAgent(self.proxy, self.defaults, on_applied=self._save)
        await self._restore()
        self.http = await serve_http(self, "0.0.0.0", LBAGENT_PORT, self.agent.handle, name="lbagent")

    async def stop_services(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.proxy is not None:
            await self.proxy.close()
        await super().stop_services()

    # -- keepalived: the VIPs --

    def claim_vips(self, ips: list[str]) -> None:
        for ip in ips:  # one announcer per VIP, so that releasing one leaves the others alone
            self.announce(self.vip_nic, [ip], self.timers.keepalived_advert_int)
        log.info("claimed VIPs %s (re-announced every %g s)", ", ".join(ips), self.timers.keepalived_advert_int)

    def release_vips(self, ips: list[str]) -> None:
        self.release(self.vip_nic, ips)
        log.info("released VIPs %s", ", ".join(ips))

    # -- the disk --

    def _save(self, config: LBConfig) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        doc = {"cluster": self.cluster, "nic": list(self.config.nics[0].addresses), "config": config.to_json()}
        tmp = self.state_dir / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.state_dir / CONFIG_FILE)
        (self.state_dir / CFG_FILE).write_text(self.proxy.render_cfg() if self.proxy else "")

    async def _restore(self) -> None:
        path = self.state_dir / CONFIG_FILE
        if not path.exists():
            return
        try:
            doc = json.loads(path.read_text())
            if doc.get("cluster") != self.cluster or doc.get("nic") != list(self.config.nics[0].addresses):
                log.info("%s belongs to another VM (cluster or address differ): ignored", path)
                return
            assert self.agent is not None
            result = await self.agent.apply_json(doc.get("config"))
            log.info("restored config from %s: generation %d", path, result["generation"])
        except (OSError, ValueError, AttributeError, LBConfigError, ApplyError) as exc:
            log.error("could not restore %s: %s", path, exc)

    # -- management --

    def mgmt_handlers(self) -> dict[str, mgmt.Handler]:
        return {**super().mgmt_handlers(), "lb_stats": self._m_lb_stats, "lb_config": self._m_lb_config}

    def _proxy(self) -> TcpProxy:
        if self.proxy is None:
            raise mgmt.MgmtError("haproxy: not running yet")
        return self.proxy

    def _m_lb_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        proxy = self._proxy()
        return {"csv": proxy.csv(), "rows": proxy.stats()}

    def _m_lb_config(self, args: dict[str, Any]) -> dict[str, Any]:
        proxy = self._proxy()
        return {"cfg": proxy.render_cfg(), "config": proxy.config.to_json(), "generation": proxy.lb.generation}

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if self.proxy is not None:
            out["haproxy"] = {**self.proxy.info(), "lbagent": self.agent.stats() if self.agent else {}}
        return out
