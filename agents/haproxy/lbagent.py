"""The lbagent: the HTTP API on the LB VM that MOC's cloud agent programs it through (TCP 46000).

Real HTTP/1.1 (h11, :mod:`agents.vm.http`) over the emulated network:

=======  ===================  =========================================================
PUT      ``/v1/config``       JSON ``{"vips": [...], "frontends": [...], "backends": [...]}``
                              -> validated, then applied atomically; 200 with what changed,
                              400 ``{"error": "<one line naming the field>"}`` and nothing
                              changed; 409 when a validated config cannot be put in place
                              (a bind refused)
GET      ``/v1/config``       the running config as JSON (with ``generation``)
GET      ``/v1/haproxy.cfg``  the haproxy.cfg it runs, as text
GET      ``/v1/stats``        HAProxy's stats CSV (``show stat``; the stats page's ``;csv``);
                              ``?format=json`` gives the parsed rows
GET      ``/healthz``         ``ok``
=======  ===================  =========================================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agents.vm.http import Request, Response, json_response, text_response

from .core import Defaults, LBConfig, LBConfigError
from .proxy import ApplyError, TcpProxy

log = logging.getLogger("hcinet.haproxy.lbagent")

LBAGENT_PORT = 46000  # cloud agent -> lbagent (FACTS.md: MOC ports)

Route = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


class LbAgent:
    """Request handler of the lbagent; ``on_applied(config)`` runs after each successful PUT
    (the VM keeps the config on its disk)."""

    def __init__(self, proxy: TcpProxy, defaults: Defaults,
                 on_applied: Callable[[LBConfig], None] | None = None) -> None:
        self.proxy = proxy
        self.defaults = defaults
        self.on_applied = on_applied
        self.puts = 0
        self.rejected = 0
        self.routes: dict[str, dict[str, Route]] = {
            "/v1/config": {"GET": self._get_config, "PUT": self._put_config},
            "/v1/haproxy.cfg": {"GET": self._get_cfg},
            "/v1/stats": {"GET": self._get_stats},
            "/healthz": {"GET": self._healthz},
        }

    async def handle(self, request: Request) -> Response:
        methods = self.routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            return error_response(404, f"path: no such resource {request.path!r}")
        route = methods.get(request.method) or (methods.get("GET") if request.method == "HEAD" else None)
        if route is None:
            allowed = ", ".join(sorted(methods))
            response = error_response(405, f"method: {request.method} not allowed on {request.path} (allowed: {allowed})")
            response.headers["Allow"] = allowed
            return response
        return await route(request)

    async def apply_json(self, obj: Any) -> dict[str, Any]:
        """Validate and apply; LBConfigError / ApplyError say why not (nothing changed)."""
        config = LBConfig.parse(obj, self.defaults)
        changes = await self.proxy.apply(config)
        if self.on_applied is not None:
            try:
                self.on_applied(config)
            except OSError as exc:  # the config runs; only its copy on disk failed
                log.error("could not save the config: %s", exc)
        return {"generation": self.proxy.lb.generation,
                "started": [f.name for f in changes.start], "stopped": [f.name for f in changes.stop],
                "claimed": list(changes.claim), "released": list(changes.release)}

    async def _put_config(self, request: Request) -> Response:
        self.puts += 1
        try:
            obj = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            self.rejected += 1
            return error_response(400, f"body: not JSON: {str(exc).splitlines()[0]}")
        try:
            result = await self.apply_json(obj)
        except LBConfigError as exc:
            self.rejected += 1
            log.info("config from %s refused: %s", request.client[0], exc)
            return error_response(400, str(exc))
        except ApplyError as exc:
            self.rejected += 1
            log.warning("config from %s could not be applied: %s", request.client[0], exc)
            return error_response(409, str(exc))
        log.info("config generation %d from %s", result["generation"], request.client[0])
        return json_response(result)

    async def _get_config(self, request: Request) -> Response:
        return json_response({"generation": self.proxy.lb.generation, **self.proxy.config.to_json()})

    async def _get_cfg(self, request: Request) -> Response:
        return text_response(self.proxy.render_cfg())

    async def _get_stats(self, request: Request) -> Response:
        if request.query.get("format") == "json":
            return json_response(self.proxy.stats())
        return text_response(self.proxy.csv())

    async def _healthz(self, request: Request) -> Response:
        return text_response("ok\n")

    def stats(self) -> dict[str, Any]:
        return {"puts": self.puts, "rejected": self.rejected}
