"""Frame size limits: data-plane headers stay small, management replies may be large."""

from __future__ import annotations

import pytest

from broker import wire


def test_a_large_management_reply_decodes() -> None:
    frames = wire.reply(7, True, "x" * 200_000)  # e.g. a tool's long output
    assert wire.decode(frames)[2:4] == (7, True)


def test_a_reply_over_the_management_limit_becomes_a_one_line_error() -> None:
    hdr = wire.decode(wire.reply(7, True, "x" * (wire.MAX_MGMT + 1)))
    assert hdr[3] is False
    assert hdr[4].startswith("reply: ") and "exceeds the management limit" in hdr[4]


def test_a_data_plane_header_is_still_limited() -> None:
    head = wire.packets_header(0, "10.0.0.1", "x" * wire.MAX_HEADER, 1, 100, 64)
    with pytest.raises(wire.WireError) as err:
        wire.decode([head, wire.pack([])])
    assert err.value.reason == "oversized"
