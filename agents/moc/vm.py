"""The VM kind ``moc``: the MOC cloud agent as a VM on the emulated network.

It sits at ``management.cloudAgentIp`` and listens on TCP 55000 there (the cloud agent's port
in the product; ``GET /healthz`` answers ``ok``).  Its management verbs are
:class:`~agents.moc.agent.CloudAgent`'s, next to the VM runtime's own.  Config keys (besides
the VM runtime's): ``hostagent`` (the host agent's management endpoint, required),
``state_dir`` (default ``<run_dir>/moc``; the sqlite file is ``moc.sqlite`` there),
``broker_mgmt`` (to add networks created at run time to the datacenter), ``time_scale``, and
``kinds`` (role -> VM kind to run instead, e.g. ``{"apiserver": "plain"}`` for stand-ins).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from agents import mgmt
from agents.mgmt import MgmtError
from agents.timers import Timers
from agents.vm.runtime import VM, ConfigError, VMConfig, register_kind

from .agent import LBAGENT_PORT, CloudAgent
from .store import Store

log = logging.getLogger("hcinet.moc.vm")

CLOUDAGENT_PORT = 55000  # FACTS.md: the cloud agent listens on 55000 (and 65000)
LBAGENT_TIMEOUT = 5.0
APISERVER_PORT = 6443
NODE_DELETE_TIMEOUT = 3.0


class LbAgentRefused(Exception):
    """The lbagent answered, but not 200 (its error names the field)."""


@register_kind("moc")
class MocVM(VM):
    """The cloud agent VM: a plain VM plus MOC's store, verbs, HA watcher and health endpoint."""

    def __init__(self, config: VMConfig) -> None:
        super().__init__(config)
        raw = config.raw
        if not isinstance(raw.get("hostagent"), str):
            raise ConfigError("hostagent: required (the host agent's management endpoint)")
        kinds = raw.get("kinds", {})
        if not isinstance(kinds, dict) or not all(isinstance(v, str) for v in kinds.values()):
            raise ConfigError("kinds: expected a map of role -> VM kind")
        state_dir = raw.get("state_dir") or os.path.join(config.run_dir, "moc")
        if not isinstance(state_dir, str):
            raise ConfigError("state_dir: expected a directory path")
        self.state_dir = Path(state_dir)
        self.timers = Timers(float(raw.get("time_scale", 1.0)))
        self.agent: CloudAgent | None = None
        self.store: Store | None = None
        self._clients: list[Any] = []
        self._health: Any = None

    def mgmt_handlers(self) -> dict[str, mgmt.Handler]:
        # Built before start_services creates the agent: each verb looks it up when called.
        handlers = super().mgmt_handlers()
        for verb in CloudAgent.VERBS:
            handlers[verb] = self._delegate(verb)
        return handlers

    def _delegate(self, verb: str) -> mgmt.Handler:
        def handler(args: dict[str, Any]) -> Any:
            if self.agent is None:
                raise MgmtError("moc: the cloud agent is still starting")
            return self.agent.handlers[verb](args)
        return handler

    async def start_services(self) -> None:
        await super().start_services()
        raw = self.config.raw
        self.store = Store(self.state_dir / "moc.sqlite")
        hostagent = mgmt.AsyncMgmtClient(str(raw["hostagent"]), context=self.ctx)
        self._clients.append(hostagent)
        broker_api = None
        if isinstance(raw.get("broker_mgmt"), str):
            broker_api = mgmt.AsyncMgmtClient(raw["broker_mgmt"], context=self.ctx)
            self._clients.append(broker_api)
        reserved = {ip: "the cloud agent's address" for nic in self.config.nics for ip in nic.ips}
        agent = CloudAgent(store=self.store, hostagent=hostagent, timers=self.timers,
                                run_dir=self.config.run_dir, broker=self.config.broker,
                                lb_programmer=self._put_lbagent, broker_api=broker_api,
                                kinds=raw.get("kinds", {}), reserved=reserved, node_deleter=self._delete_node)
        addresses = [ip for nic in self.config.nics for ip in nic.ips]
        if addresses:
            agent.cloudagent_address = f"{addresses[0]}:{CLOUDAGENT_PORT}"
        self.agent = agent
        await agent.start()
        from agents.vm.http import serve_http

        self._health = await serve_http(self, "0.0.0.0", CLOUDAGENT_PORT, self._healthz, name="cloudagent")

    async def stop_services(self) -> None:
        if self._health is not None:
            self._health.close()
        if self.agent is not None:
            await self.agent.close()
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.store is not None:
            self.store.close()
        await super().stop_services()

    async def _healthz(self, request: Any) -> Any:
        from agents.vm.http import json_response, text_response

        if request.method == "GET" and request.path == "/healthz":
            return text_response("ok\n")
        if request.path == "/v1/loadbalancers/ensure" and request.method == "POST":
            return await self._lb_call("lb_ensure", request, None)
        if request.path.startswith("/v1/loadbalancers/") and request.method == "DELETE":
            parts = request.path.split("/")[3:]
            if len(parts) == 3 and all(parts):
                args = dict(zip(("cluster", "namespace", "name"), parts, strict=True))
                return await self._lb_call("lb_delete", request, args)
        return json_response({"error": f"path: no route {request.method} {request.path}"}, 404)

    async def _lb_call(self, verb: str, request: Any, args: dict[str, Any] | None) -> Any:
        """The cloud provider's load-balancer requests: 200 with the result, 400 with
        ``{"error": one line naming the field}`` (pool exhausted, loadBalancerIP taken...)."""
        from agents.vm.http import json_response

        if self.agent is None:
            return json_response({"error": "moc: the cloud agent is still starting"}, 503)
        if args is None:
            try:
                args = json.loads(request.body or b"{}")
            except ValueError:
                return json_response({"error": "body: not JSON"}, 400)
            if not isinstance(args, dict):
                return json_response({"error": "body: expected a JSON object"}, 400)
        try:
            result = await getattr(self.agent, verb)(args)
        except MgmtError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(result)

    async def _put_lbagent(self, ip: str, doc: dict[str, Any]) -> None:
        """``PUT /v1/config`` to the lbagent at ``ip``:46000 over the emulated network."""
        from agents.vm.http import HttpClient

        client = HttpClient(self, ip, LBAGENT_PORT, timeout=LBAGENT_TIMEOUT)
        try:
            response = await client.request("PUT", "/v1/config", headers={"Content-Type": "application/json"},
                                            body=json.dumps(doc).encode())
        finally:
            client.close()
        if response.status != 200:
            raise LbAgentRefused(f"{response.status} {response.reason}: {response.text.strip()[:200]}")

    async def _delete_node(self, vip: str, name: str) -> None:
        """``DELETE /api/v1/nodes/NAME`` at the cluster's VIP:6443 over the emulated network
        (through its LB VM, as every client of the API server); a 404 means done already."""
        from agents.kube.client import ApiError, KubeClient, api_path

        client = KubeClient(self, vip, APISERVER_PORT, timeout=NODE_DELETE_TIMEOUT, user_agent="moc-cloudagent/1.0")
        try:
            await client.request("DELETE", api_path("nodes", name=name))
        except ApiError as exc:
            if exc.status != 404:
                raise
        finally:
            await client.close()

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if self.agent is not None:
            out["moc"] = {"event_cursor": self.agent.events_seen, "ha_restarts": self.agent.ha_restarts,
                          "vms": len(self.agent.vms), "clusters": len(self.agent.clusters)}
        return out
