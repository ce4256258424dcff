"""Kubernetes ``Status`` errors: the codes, reasons and message texts of k8s.io/apimachinery
(``pkg/api/errors/errors.go``), so a client sees what it would see from a real API server."""

from __future__ import annotations

from typing import Any

from .resources import Resource


class StatusError(Exception):
    """A refused request; :meth:`status` is the ``Status`` object the client receives."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"StatusError({self.code}, {self.reason!r}, {self.message!r})"


def _details(res: Resource, name: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": res.plural}
    if res.group:
        d["group"] = res.group
    return d


def not_found(res: Resource, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def already_exists(res: Resource, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name))


def conflict(res: Resource, name: str, why: str = "the object has been modified; please apply your "
             "changes to the latest version and try again") -> StatusError:
    return StatusError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
                       _details(res, name))


def gone(requested: int, oldest: int) -> StatusError:
    # The watch cache's wording (staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go).
    return StatusError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def forbidden(res: Resource, name: str, why: str) -> StatusError:
    return StatusError(403, "Forbidden", f'{res.qualified} "{name}" is forbidden: {why}', _details(res, name))


def method_not_allowed(method: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                       f"resource ({method})")


def path_not_found() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource",
                       {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})


def unsupported_media_type(ctype: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                       f"accepted media types include: application/json-patch+json, "
                       f"application/merge-patch+json, application/strategic-merge-patch+json "
                       f"(got {ctype})")
