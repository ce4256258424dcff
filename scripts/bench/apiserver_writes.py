"""API server write throughput against raw sqlite, same durability, measured in one run.

    raw_sqlite_writes_per_s   one INSERT + COMMIT per object, WAL + synchronous=NORMAL (the floor
                              of "durable against a process crash" on this disk)
    store_writes_per_s        Store.create, one commit per object (no group commit)
    store_batched_writes_per_s  Store.create, 8 objects per commit (group commit's best case)
    api_writes_per_s          (--vm) 8 concurrent clients on the management plane, one object per
                              request, through a real apiserver VM process: each reply means the
                              object is committed

    python scripts/bench/apiserver_writes.py [--json] [--vm] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agents.apiserver.store import Store  # noqa: E402


def raw_sqlite(path: str, seconds: float) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE o (k TEXT PRIMARY KEY, body TEXT)")
    body = json.dumps({"metadata": {"name": "x" * 20, "namespace": "default"}, "data": {"k": "v" * 50}})
    n, end = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        db.execute("BEGIN")
        db.execute("INSERT INTO o VALUES (?, ?)", (f"k{n}", body))
        db.execute("COMMIT")
        n += 1
    rate = n / (time.perf_counter() - start)
    db.close()
    return rate


def store_rate(path: str, seconds: float, per_commit: int) -> float:
    store = Store(path)
    n, start = 0, time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        with store.batch():
            for _ in range(per_commit):
                store.create("configmaps", {"metadata": {"name": f"c{n}", "namespace": "default"},
                                            "data": {"k": "v" * 50}})
                n += 1
    rate = n / (time.perf_counter() - start)
    store.close()
    return rate


def _ready(rfd: int, timeout: float = 15.0) -> dict[str, Any]:
    import select

    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([rfd], [], [], left)[0]:
            raise TimeoutError("no readiness line")
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    result: dict[str, Any] = json.loads(data)
    return result


def _spawn(argv: list[str]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    rfd, wfd = os.pipe()
    proc = subprocess.Popen([*argv, "--ready-fd", str(wfd)], pass_fds=(wfd,), cwd=ROOT,
                            stdout=subprocess.DEVNULL)
    os.close(wfd)
    return proc, _ready(rfd)


def api_writes(endpoint: str, seconds: float, clients: int = 8, namespace: str = "default") -> dict[str, Any]:
    """``clients`` threads, each one blocking DEALER on the API server VM's management
    endpoint: POST a ConfigMap, wait for the reply, for ``seconds``.  Raises on an error."""
    import zmq

    from agents import mgmt
    from broker import wire

    counts = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]
    path = f"/api/v1/namespaces/{namespace}/configmaps"

    def worker(i: int) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        barrier.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            body = {"metadata": {"name": f"c{i}-{n}"}, "data": {"k": "v" * 50}}
            sock.send_multipart(wire.request(n, "api", {"method": "POST", "path": path, "body": body}))
            if not sock.poll(10_000):
                errors.append("no reply within 10 s")
                break
            _, result = mgmt.parse_reply(sock.recv_multipart())
            if result["status"] != 201:
                errors.append(str(result))
                break
            n += 1
        counts[i] = n
        sock.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"api writes: {errors[0]}")
    return {"api_writes_per_s": sum(counts) / elapsed, "api_writes": sum(counts)}


def api_rate(tmp: str, seconds: float, clients: int = 8) -> dict[str, Any]:

    from agents import mgmt

    broker, bready = _spawn([sys.executable, "-m", "broker", "--data", "tcp://127.0.0.1:0",
                             "--mgmt", "tcp://127.0.0.1:0"])
    procs = [broker]
    try:
        mgmt.call(bready["mgmt"], "add_network", {"name": "dc", "prefix": "172.16.0.0/24",
                                                  "gateway": "172.16.0.1", "vlan": 0, "mtu": 1500,
                                                  "external": False})
        cfg = {"name": "bench-api", "kind": "apiserver", "run_dir": tmp, "broker": bready["data"],
               "nics": [{"name": "eth0", "network": "dc", "mac": "02:00:ac:10:00:14",
                         "addresses": ["172.16.0.20/24"], "gateway": "172.16.0.1"}],
               "state_dir": os.path.join(tmp, "api-state"), "time_scale": 1.0}
        cfg_path = os.path.join(tmp, "api.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        vm, vready = _spawn([sys.executable, "-m", "agents.vm", "--config", cfg_path])
        procs.append(vm)
        if not vready.get("ready"):
            raise RuntimeError(f"apiserver VM: {vready}")
        rate = api_writes(vready["mgmt"], seconds, clients)
        stats = mgmt.call(vready["mgmt"], "stats")["apiserver"]
        return {"api_writes_per_s": round(rate["api_writes_per_s"]),
                "api_group_commits": stats["group_commits"], "api_max_group": stats["max_group"]}
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--vm", action="store_true", help="also measure through an apiserver VM process")
    parser.add_argument("--seconds", type=float, default=2.0)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hcinet-bench-") as tmp:
        out: dict[str, Any] = {
            "raw_sqlite_writes_per_s": round(raw_sqlite(os.path.join(tmp, "raw.sqlite"), ns.seconds)),
            "store_writes_per_s": round(store_rate(os.path.join(tmp, "s1.sqlite"), ns.seconds, 1)),
            "store_batched_writes_per_s": round(store_rate(os.path.join(tmp, "s8.sqlite"), ns.seconds, 8)),
        }
        if ns.vm:
            out.update(api_rate(tmp, ns.seconds))
    if ns.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32} {v}")


if __name__ == "__main__":
    main()
