"""The trio <-> pyzmq adapter over real sockets: bursts, concurrent directions, RPC matching.

zmq.FD is edge-triggered: an adapter that waits on it without re-checking zmq.EVENTS after
every wake and every operation hangs on bursts.  Every test runs under a deadline, so a hang
is a failure, not a stuck suite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import zmq

from agents import mgmt, triozmq
from broker import wire

DEADLINE = 10.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def pair(ctx: zmq.Context[Any], a: int, b: int, endpoint: str = "inproc://t", **opts: int) -> tuple[Any, Any]:
    server = ctx.socket(a)
    for opt, value in opts.items():
        server.setsockopt(getattr(zmq, opt), value)
    server.bind(endpoint)
    client = ctx.socket(b)
    for opt, value in opts.items():
        client.setsockopt(getattr(zmq, opt), value)
    client.connect(server.getsockopt_string(zmq.LAST_ENDPOINT) if endpoint.startswith("tcp") else endpoint)
    return server, client


async def test_burst_sent_before_the_receiver_waits(ctx: zmq.Context[Any]) -> None:
    """Many messages behind one FD edge: each must be received, none left waiting."""
    pull, push = pair(ctx, zmq.PULL, zmq.PUSH, SNDHWM=0, RCVHWM=0)  # 0 = no limit: never blocks
    n = 5000
    for i in range(n):
        push.send_multipart([b"m", i.to_bytes(4, "big")])
    got = []
    with trio.fail_after(DEADLINE):
        for _ in range(n):
            got.append(int.from_bytes((await triozmq.recv_multipart(pull))[1], "big"))
    assert got == list(range(n))


async def test_bursts_while_the_receiver_sleeps_on_the_fd(ctx: zmq.Context[Any]) -> None:
    """Bursts from another trio task over tcp, each burst after the receiver parked on the FD."""
    pull, push = pair(ctx, zmq.PULL, zmq.PUSH, "tcp://127.0.0.1:0")
    bursts, size = 20, 200
    received = 0
    go = trio.Event()

    async def receiver() -> None:
        nonlocal received
        while received < bursts * size:
            await triozmq.recv_multipart(pull)
            received += 1

    async def sender() -> None:
        for _ in range(bursts):
            await trio.testing.wait_all_tasks_blocked()  # the receiver waits on the FD now
            for _ in range(size):
                await triozmq.send_multipart(push, [b"x" * 100])
        go.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(sender)
    assert received == bursts * size


async def test_send_and_receive_concurrently_on_one_socket_with_tiny_hwm(ctx: zmq.Context[Any]) -> None:
    """One task sends while another receives on the same DEALER: a send can swallow the edge
    that announced a reply; with SNDHWM=RCVHWM=4 the sender also has to wait for POLLOUT.
    (DEALER <-> DEALER: both block at the high-water mark; a ROUTER would drop instead.)"""
    router, dealer = pair(ctx, zmq.DEALER, zmq.DEALER, "tcp://127.0.0.1:0", SNDHWM=4, RCVHWM=4)
    n = 3000
    echoed: list[int] = []

    async def echo() -> None:
        for _ in range(n):
            frames = await triozmq.recv_multipart(router)
            await triozmq.send_multipart(router, frames)

    async def send() -> None:
        for i in range(n):
            await triozmq.send_multipart(dealer, [i.to_bytes(4, "big")])

    async def receive() -> None:
        for _ in range(n):
            echoed.append(int.from_bytes((await triozmq.recv_multipart(dealer))[0], "big"))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            nursery.start_soon(receive)
            nursery.start_soon(send)
    assert echoed == list(range(n))


async def test_two_receivers_on_one_socket_share_the_fd(ctx: zmq.Context[Any]) -> None:
    """trio lets one task at a time wait on an fd; the second parks and still gets messages."""
    pull, push = pair(ctx, zmq.PULL, zmq.PUSH)
    got: list[bytes] = []

    async def receiver() -> None:
        for _ in range(50):
            got.append((await triozmq.recv_multipart(pull))[0])

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(100):
                push.send(b"%d" % i)
    assert sorted(got, key=int) == [b"%d" % i for i in range(100)]


async def test_cancelled_receive_takes_no_message(ctx: zmq.Context[Any]) -> None:
    pull, push = pair(ctx, zmq.PULL, zmq.PUSH)
    with trio.move_on_after(0.05) as cs:
        await triozmq.recv_multipart(pull)
    assert cs.cancelled_caught
    push.send(b"after")
    with trio.fail_after(DEADLINE):
        assert await triozmq.recv_multipart(pull) == [b"after"]


async def test_drain_takes_what_is_queued_without_waiting(ctx: zmq.Context[Any]) -> None:
    pull, push = pair(ctx, zmq.PULL, zmq.PUSH)
    for i in range(10):
        push.send(b"%d" % i)
    with trio.fail_after(DEADLINE):
        first = await triozmq.recv_multipart(pull)  # waits for the first to arrive
    rest: list[list[bytes]] = []
    with trio.fail_after(DEADLINE):
        while len(rest) < 9:
            rest += triozmq.drain(pull, limit=4)
            if len(rest) < 9:
                await triozmq.wait_ready(pull, zmq.POLLIN)
    assert [first, *rest] == [[b"%d" % i] for i in range(10)]
    assert triozmq.drain(pull) == []


# --- the management client and server -------------------------------------------------------

async def _serve(nursery: trio.Nursery, ctx: zmq.Context[Any], handlers: dict[str, Any]) -> tuple[str, Any]:
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    await nursery.start(triozmq.serve_mgmt, sock, handlers)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT), sock


async def test_concurrent_calls_get_their_own_replies_out_of_order(ctx: zmq.Context[Any]) -> None:
    async def slow_echo(args: dict[str, Any]) -> Any:
        await trio.sleep(args["delay"])
        return {"x": args["x"]}

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            endpoint, _ = await _serve(nursery, ctx, {"echo": slow_echo})
            client = triozmq.TrioMgmtClient(endpoint, context=ctx)
            results: dict[int, Any] = {}

            async def one(x: int) -> None:
                # Later calls finish first: replies arrive in the reverse order of requests.
                results[x] = await client.call("echo", {"x": x, "delay": (40 - x) * 0.002})

            async with trio.open_nursery() as calls:
                for x in range(40):
                    calls.start_soon(one, x)
            client.close()
            nursery.cancel_scope.cancel()
    assert results == {x: {"x": x} for x in range(40)}


async def test_errors_timeouts_and_late_replies(ctx: zmq.Context[Any]) -> None:
    release = trio.Event()

    def refuse(args: dict[str, Any]) -> Any:
        raise mgmt.MgmtError("prefix: 10.0.0.0/33 is not a prefix")

    async def stuck(args: dict[str, Any]) -> Any:
        await release.wait()
        return "late"

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            endpoint, _ = await _serve(nursery, ctx, {"refuse": refuse, "stuck": stuck, "ping": lambda a: "pong"})
            async with triozmq.TrioMgmtClient(endpoint, context=ctx) as client:
                with pytest.raises(mgmt.RemoteError, match=r"^prefix: 10.0.0.0/33 is not a prefix$"):
                    await client.call("refuse")
                with pytest.raises(mgmt.RemoteError, match="unknown command 'nope'"):
                    await client.call("nope")
                with pytest.raises(TimeoutError, match="no answer to 'stuck'"):
                    await client.call("stuck", timeout=0.1)
                release.set()  # its reply arrives now, for a call nobody waits on any more
                assert await client.call("ping") == "pong"
                assert client._pending == {}
            nursery.cancel_scope.cancel()


async def test_server_survives_garbage_and_answers_the_next_request(ctx: zmq.Context[Any]) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            endpoint, _ = await _serve(nursery, ctx, {"ping": lambda a: "pong"})
            raw = ctx.socket(zmq.DEALER)
            raw.connect(endpoint)
            for frames in ([b"\xc1garbage"], [wire.pack((99, wire.REQUEST, 1, "ping", {}))],
                           wire.reply(1, True, "not a request"), [b""], wire.request(1, "ping") + [b"extra"]):
                raw.send_multipart(frames)
            raw.send_multipart(wire.request(7, "ping"))
            reply = await triozmq.recv_multipart(raw)
            assert mgmt.parse_reply(reply) == (7, "pong")
            raw.close(linger=0)
            nursery.cancel_scope.cancel()


async def test_a_send_that_swallows_the_read_edge_still_wakes_the_receiver(ctx: zmq.Context[Any]) -> None:
    """The receiver waits on the FD; a message arrives (the FD turns readable) and, before
    trio polls, another task sends on the same socket: libzmq processes the "activate read"
    command inside that send and drains the FD.  Only re-checking zmq.EVENTS after the send
    wakes the receiver."""
    sock, peer = pair(ctx, zmq.DEALER, zmq.DEALER)
    got: list[list[bytes]] = []

    async def receiver() -> None:
        got.append(await triozmq.recv_multipart(sock))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()  # parked on the FD
            peer.send(b"hello")  # inproc: the command lands in sock's mailbox now
            # libzmq processes commands inside send() at most about once per millisecond
            # (max_command_delay); step past that window so this send does process them.
            time.sleep(0.01)
            await triozmq.send_multipart(sock, [b"out"])
    assert got == [[b"hello"]]
    assert peer.recv() == b"out"
