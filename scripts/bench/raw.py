"""Raw pyzmq baselines, measured in the same run as the emulated figures.

The plain, straightforward programs that LIMITS.md describes, nothing slowed down:
DEALER -> ROUTER relay -> DEALER across three processes, the relay a blocking loop that
does not decode, and a round trip between two uvloop endpoints through the same relay.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import msgpack
import zmq

STOP = b"STOP"


def relay(endpoint_q: mp.Queue) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.bind("tcp://127.0.0.1:0")
    endpoint_q.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        src, dst, payload = recv()
        if dst == STOP:
            break
        send([dst, src, payload])
    sock.close(linger=0)
    ctx.term()


def _dealer(ctx: zmq.Context, endpoint: str, ident: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, ident)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(endpoint)
    return sock


def receiver(endpoint: str, n_msgs: int, batched: bool, out: mp.Queue) -> None:
    ctx = zmq.Context()
    sock = _dealer(ctx, endpoint, b"rx")
    # Say hello until the sender starts: a ROUTER drops messages to a peer not yet connected.
    while True:
        sock.send_multipart([b"tx", b"hello"])
        if sock.poll(100):
            break
    recv = sock.recv_multipart
    unpackb = msgpack.unpackb
    packets = nbytes = 0
    first = 0.0
    for i in range(n_msgs):
        _, payload = recv()
        if i == 0:
            first = time.perf_counter()
        if batched:
            batch = unpackb(payload)
            packets += len(batch)
            nbytes += sum(len(p) for p in batch)
        else:
            packets += 1
            nbytes += len(payload)
    out.put((packets, nbytes, time.perf_counter() - first))
    sock.close(linger=0)
    ctx.term()


def _run_relay_throughput(size: int, per_msg: int, n_msgs: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    out: mp.Queue = ctx.Queue()
    rel = ctx.Process(target=relay, args=(q,))
    rel.start()
    endpoint = q.get(timeout=30)
    rx = ctx.Process(target=receiver, args=(endpoint, n_msgs, per_msg > 1, out))
    rx.start()
    zctx = zmq.Context()
    tx = _dealer(zctx, endpoint, b"tx")
    # wait for the receiver's hello so it is routable before we start
    tx.recv_multipart()
    payload = b"x" * size
    msg = msgpack.packb([payload] * per_msg) if per_msg > 1 else payload
    send = tx.send_multipart
    for _ in range(n_msgs):
        send([b"rx", msg])
    packets, nbytes, seconds = out.get(timeout=300)
    send([STOP, b""])
    rx.join(30)
    rel.join(30)
    tx.close(linger=0)
    zctx.term()
    return packets / seconds, nbytes / seconds / 1e6


def raw_single_relay_pps(n: int = 300_000) -> float:
    return _run_relay_throughput(100, 1, n)[0]


def raw_batch_relay_pps(n: int = 60_000) -> float:
    return _run_relay_throughput(100, 64, n)[0]


def raw_bulk_relay_mb_per_s(n: int = 20_000) -> float:
    return _run_relay_throughput(1400, 64, n)[1]


def _echo_endpoint(endpoint: str, ident: bytes, peer: bytes, n: int, out: mp.Queue | None) -> None:
    import uvloop
    import zmq.asyncio

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, ident)
        sock.connect(endpoint)
        if out is None:  # the echo side
            while True:
                src, payload = await sock.recv_multipart()
                if payload == STOP:
                    break
                await sock.send_multipart([src, payload])
        else:
            # Until the echo side is connected the relay drops what we send it: retry.
            while True:
                await sock.send_multipart([peer, b"hello"])
                if await sock.poll(100):
                    break
            rtts = []
            for i in range(n):
                payload = i.to_bytes(4, "big") * 25  # 100 bytes, numbered
                t0 = time.perf_counter()
                await sock.send_multipart([peer, payload])
                while (await sock.recv_multipart())[1] != payload:
                    pass  # a late echo of a hello
                rtts.append((time.perf_counter() - t0) * 1e6)
            await sock.send_multipart([peer, STOP])
            out.put(rtts)
        sock.close(linger=100)
        ctx.term()

    uvloop.run(main())


def raw_rtt_us(n: int = 3000) -> tuple[float, float]:
    """p50 and p99 of a round trip between two uvloop endpoints through the blocking relay."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    out: mp.Queue = ctx.Queue()
    rel = ctx.Process(target=relay, args=(q,))
    rel.start()
    endpoint = q.get(timeout=30)
    pinger = ctx.Process(target=_echo_endpoint, args=(endpoint, b"a", b"b", n, out))
    echo = ctx.Process(target=_echo_endpoint, args=(endpoint, b"b", b"a", n, None))
    pinger.start()
    echo.start()
    rtts = out.get(timeout=120)
    pinger.join(30)
    echo.join(30)
    zctx = zmq.Context()
    stop = _dealer(zctx, endpoint, b"stopper")
    stop.send_multipart([STOP, b""])
    rel.join(30)
    stop.close(linger=0)
    zctx.term()
    rtts = rtts[len(rtts) // 10:]  # warm-up
    rtts.sort()
    return statistics.median(rtts), rtts[int(len(rtts) * 0.99)]


if __name__ == "__main__":
    print("raw_single_relay_pps", round(raw_single_relay_pps()))
    print("raw_batch_relay_pps", round(raw_batch_relay_pps()))
    print("raw_bulk_relay_mb_per_s", round(raw_bulk_relay_mb_per_s(), 1))
    print("raw_rtt_us", raw_rtt_us())
