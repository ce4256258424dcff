"""The wire format: every message between a VM and the broker, and on the management plane.

All frames are msgpack.  Every message starts with a header list ``[VERSION, KIND, ...]``;
packet batches add a second frame, the msgpack-encoded list of packets, which the broker's
fast path forwards without decoding.

Data plane (VM NIC <-> broker, a DEALER per VM to the broker's ROUTER):

=========  =========  ==============================================================
kind       direction  header fields after ``[VERSION, KIND]``
=========  =========  ==============================================================
ATTACH     VM->broker ``nic, spec`` — spec: ``{vm, name, mac, network, ips, mtu}``
ATTACHED   broker->VM ``nic, ok, reason`` — reply to ATTACH
CLAIM      VM->broker ``nic, ips`` — "gratuitous ARP": the NIC answers for these IPs now
RELEASE    VM->broker ``nic, ips`` — the NIC stops answering for these IPs
DETACH     VM->broker ``nic`` — the NIC leaves; the broker acknowledges with DETACHED
DETACHED   broker->VM ``nic`` — sent after every earlier frame of the VM was processed
PACKETS    VM->broker ``nic, dst, via, count, nbytes, min_ttl`` + body frame
DELIVER    broker->VM ``nic, hops, count, nbytes`` + body frame
NOTICE     broker->VM ``nic, what, detail`` — e.g. a claim that was refused
=========  =========  ==============================================================

``PACKETS`` carries packets of one NIC to one L3 destination ``dst`` through one next hop
``via`` (the VM groups its output by both), so the broker routes the whole batch with one
lookup.  ``via`` is ``""`` for an on-link destination (the broker delivers to the NIC that
claims ``dst``), the network's gateway address for routed traffic (the broker's router
forwards by ``dst``), or another NIC's address (delivered to that NIC, which forwards).  ``count``/``nbytes``
are the batch's exact packet count and wire bytes (for the counters), ``min_ttl`` its
lowest TTL (a batch whose TTL would expire on the way takes the slow path).  ``DELIVER``
says how many router hops the batch crossed; the receiver lowers each TTL by that much.

Management plane (any client DEALER -> a process's management ROUTER):

    REQUEST  ``[VERSION, REQUEST, req_id, verb, args]``
    REPLY    ``[VERSION, REPLY, req_id, ok, result_or_error]``

Decoding never raises anything but :class:`WireError`, whose ``reason`` is one of
``garbage``, ``version``, ``truncated``, ``oversized``, ``kind`` — the bad-frame counters
are keyed by it.
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 1

# Data-plane kinds.
ATTACH = 1
ATTACHED = 2
CLAIM = 3
RELEASE = 4
DETACH = 5
DETACHED = 6
PACKETS = 7
DELIVER = 8
NOTICE = 9
# Management-plane kinds.
REQUEST = 20
REPLY = 21

KIND_NAMES = {
    ATTACH: "attach", ATTACHED: "attached", CLAIM: "claim", RELEASE: "release",
    DETACH: "detach", DETACHED: "detached", PACKETS: "packets", DELIVER: "deliver",
    NOTICE: "notice", REQUEST: "request", REPLY: "reply",
}

# Number of header fields (after version and kind) each kind must carry.
_ARITY = {
    ATTACH: 2, ATTACHED: 3, CLAIM: 2, RELEASE: 2, DETACH: 1, DETACHED: 1,
    PACKETS: 6, DELIVER: 4, NOTICE: 3, REQUEST: 3, REPLY: 3,
}
# Kinds followed by a body frame.
WITH_BODY = frozenset({PACKETS, DELIVER})

MAX_HEADER = 64 * 1024           # a data-plane header: a handful of fields
MAX_BODY = 8 * 1024 * 1024       # a batch body
MAX_MGMT = 8 * 1024 * 1024       # a management request or reply (e.g. a tool's output)
_MGMT_KINDS = frozenset({REQUEST, REPLY})
MAX_BATCH = 64  # packets per PACKETS/DELIVER frame (LIMITS.md: batching is worth 30x)

BAD_FRAME_REASONS = ("garbage", "version", "truncated", "oversized", "kind")


class WireError(ValueError):
    """A frame that does not decode; ``reason`` keys the bad-frame counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_packb = msgpack.Packer(use_bin_type=True).pack


def pack(obj: Any) -> bytes:
    return _packb(obj)


def _decode_reason(exc: Exception) -> str:
    """msgpack's complaint -> bad-frame reason.  A container announcing more items than the
    frame has bytes left ("N exceeds max_array_len(M)": msgpack bounds lengths by the buffer)
    was cut short just like an "incomplete input": both are ``truncated``."""
    text = str(exc).lower()
    return "truncated" if "incomplete" in text or "exceeds max_" in text else "garbage"


def unpack_body(frame: bytes) -> Any:
    """Decode a body frame (packets as tuples)."""
    if len(frame) > MAX_BODY:
        raise WireError("oversized", f"body of {len(frame)} bytes")
    try:
        return msgpack.unpackb(frame, use_list=False, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(_decode_reason(exc), f"body does not decode ({exc})") from None


def decode(frames: list[bytes]) -> tuple[Any, ...]:
    """Decode and check a message's header; return the header tuple ``(VERSION, KIND, ...)``.

    For kinds with a body, the body frame is left undecoded (the fast path forwards it as is)
    but must be present.
    """
    if not frames:
        raise WireError("truncated", "empty message")
    head = frames[0]
    # Management messages carry their payload in the header frame; their first bytes
    # (fixarray marker, version, kind) say so before anything is decoded.
    limit = MAX_MGMT if head[2:3] and head[2] in _MGMT_KINDS and head[1] == VERSION else MAX_HEADER
    if len(head) > limit:
        raise WireError("oversized", f"header of {len(head)} bytes")
    try:
        hdr = msgpack.unpackb(head, use_list=False, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(_decode_reason(exc), f"header ({exc})") from None
    if not isinstance(hdr, tuple) or len(hdr) < 2:
        raise WireError("garbage", "header is not a [version, kind, ...] list")
    if hdr[0] != VERSION:
        raise WireError("version", f"version {hdr[0]!r}, expected {VERSION}")
    kind = hdr[1]
    arity = _ARITY.get(kind) if isinstance(kind, int) else None
    if arity is None:
        raise WireError("kind", f"unknown message kind {kind!r}")
    if len(hdr) != arity + 2:
        raise WireError("truncated", f"{KIND_NAMES[kind]} expects {arity} fields, got {len(hdr) - 2}")
    if kind in WITH_BODY:
        if len(frames) != 2:
            raise WireError("truncated", f"{KIND_NAMES[kind]} without its body frame")
        if len(frames[1]) > MAX_BODY:
            raise WireError("oversized", f"body of {len(frames[1])} bytes")
    elif len(frames) != 1:
        raise WireError("garbage", f"{KIND_NAMES[kind]} with {len(frames) - 1} extra frames")
    return hdr


# --- encoders (one per kind, so callers never build headers by hand) -----------------------

def attach(nic: int, spec: dict[str, Any]) -> list[bytes]:
    return [_packb((VERSION, ATTACH, nic, spec))]


def attached(nic: int, ok: bool, reason: str = "") -> list[bytes]:
    return [_packb((VERSION, ATTACHED, nic, ok, reason))]


def claim(nic: int, ips: list[str]) -> list[bytes]:
    return [_packb((VERSION, CLAIM, nic, ips))]


def release(nic: int, ips: list[str]) -> list[bytes]:
    return [_packb((VERSION, RELEASE, nic, ips))]


def detach(nic: int) -> list[bytes]:
    return [_packb((VERSION, DETACH, nic))]


def detached(nic: int) -> list[bytes]:
    return [_packb((VERSION, DETACHED, nic))]


def packets(nic: int, dst: str, via: str, batch: list[Any] | tuple[Any, ...], nbytes: int,
            min_ttl: int) -> list[bytes]:
    return [_packb((VERSION, PACKETS, nic, dst, via, len(batch), nbytes, min_ttl)), _packb(batch)]


def packets_header(nic: int, dst: str, via: str, count: int, nbytes: int, min_ttl: int) -> bytes:
    return _packb((VERSION, PACKETS, nic, dst, via, count, nbytes, min_ttl))


def deliver_header(nic: int, hops: int, count: int, nbytes: int) -> bytes:
    return _packb((VERSION, DELIVER, nic, hops, count, nbytes))


def notice(nic: int, what: str, detail: Any) -> list[bytes]:
    return [_packb((VERSION, NOTICE, nic, what, detail))]


def request(req_id: int, verb: str, args: dict[str, Any] | None = None) -> list[bytes]:
    return [_packb((VERSION, REQUEST, req_id, verb, args or {}))]


def reply(req_id: int, ok: bool, result: Any) -> list[bytes]:
    frame = _packb((VERSION, REPLY, req_id, ok, result))
    if len(frame) > MAX_MGMT:  # the client would drop it and wait for its timeout: say why
        frame = _packb((VERSION, REPLY, req_id, False,
                        f"reply: {len(frame)} bytes exceeds the management limit of {MAX_MGMT}"))
    return [frame]
