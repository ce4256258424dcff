"""Fabric benchmark: the emulated network against raw pyzmq, measured in one run.

Raw baselines (scripts/bench/raw.py): a DEALER -> ROUTER relay -> DEALER path across three
processes with a plain blocking relay, 100-byte packets one per message and 64 per message,
1400-byte packets 64 per message, and the round trip between two uvloop endpoints.

Emulated figures: a deployment brought up exactly as users do (host agent, broker, VM
processes), then
  udp_pps      100-byte UDP datagrams vm-a -> broker -> vm-b, one application send each,
               counted where the receiving socket gets them (a udp-sink app);
  tcp_mb_per_s one TCP-like stream with 1 MB writes, bytes delivered in order (the sink's
               SHA-256 must match);
  rtt_p50_us / rtt_p99_us  emulated ping vm-a -> broker -> vm-b.

    python scripts/bench/fabric.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import raw  # noqa: E402

from scenarios import runner, schema  # noqa: E402

SCENARIO = """
name: bench-fabric
networks:
  - {name: dc, ipAddressPrefix: 172.16.0.0/24, gateway: 172.16.0.1}
vms:
  - name: vm-a
    network: dc
    ip: 172.16.0.10
  - name: vm-b
    network: dc
    ip: 172.16.0.11
    apps:
      - {kind: udp-sink, port: 9}
      - {kind: tcp-sink, port: 9000}
"""

async def _exec(endpoint: str, argv: list[str], timeout: float = 300.0) -> str:
    result = await runner.call(endpoint, "exec", {"argv": argv}, timeout=timeout)
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result['stderr'] or result['stdout']}")
    return str(result["stdout"])


async def _sink_stats(endpoint: str) -> dict[str, Any]:
    stats = await runner.call(endpoint, "stats")
    return next(a for a in stats["apps"] if a["kind"] == "udp-sink")


async def emulated(quick: bool) -> dict[str, float]:
    deployment = f"bench-{os.getpid()}"
    dep = await runner.up(schema.loads(SCENARIO), deployment, out=sys.stderr)  # stdout: the report only
    try:
        vm_a = dep.vms["vm-a"]["mgmt"]
        vm_b = dep.vms["vm-b"]["mgmt"]
        out: dict[str, float] = {}

        # UDP: one application send per datagram; counted where the receiving socket gets
        # them, from the sender's first send to the last arrival (one monotonic clock).
        count = 100_000 if quick else 400_000
        await _exec(vm_a, ["udp-send", "--count", "20000", "172.16.0.11", "9"])  # warm-up
        before = await _sink_stats(vm_b)
        sent = json.loads(await _exec(vm_a, ["udp-send", "--json", "--count", str(count), "172.16.0.11", "9"]))
        after = await _settled(vm_b)
        delivered = after["datagrams"] - before["datagrams"]
        out["udp_pps"] = delivered / (after["last_at"] - sent["start"])
        out["udp_delivered_fraction"] = delivered / count
        out["udp_send_pps"] = sent["pps"]

        # TCP: one stream, 1 MB writes.
        nbytes = (50 if quick else 200) * 1_000_000
        text = await _exec(vm_a, ["transfer", "--json", "--chunk", str(1 << 20), "--bytes", str(nbytes),
                                  "172.16.0.11", "9000"])
        tcp = json.loads(text)
        if not tcp["match"]:
            raise RuntimeError("tcp transfer: SHA-256 mismatch")
        out["tcp_mb_per_s"] = tcp["mb_per_s"]

        # Ping, one probe in flight at a time (-A) like the raw round trip; the per-packet
        # lines carry the RTT (iputils format).
        n = 1000 if quick else 3000
        text = await _exec(vm_a, ["ping", "-A", "-c", str(n), "-i", "0", "172.16.0.11"])
        rtts = sorted(float(m) * 1000 for m in re.findall(r"time=([0-9.]+) ms", text))
        out["rtt_p50_us"] = statistics.median(rtts)
        out["rtt_p99_us"] = rtts[int(len(rtts) * 0.99)]
        out["ping_replies"] = len(rtts)
        return out
    finally:
        await runner.down(deployment, out=sys.stderr)


async def _settled(endpoint: str) -> dict[str, Any]:
    """The sink's stats once its count stops moving (the last datagrams may be in flight)."""
    last = await _sink_stats(endpoint)
    while True:
        await trio.sleep(0.1)
        now = await _sink_stats(endpoint)
        if now["datagrams"] == last["datagrams"]:
            return now
        last = now


def ratios(res: dict[str, Any]) -> dict[str, float]:
    return {
        "udp_pps / raw_single_relay_pps": res["udp_pps"] / res["raw_single_relay_pps"],
        "udp_pps / raw_batch_relay_pps": res["udp_pps"] / res["raw_batch_relay_pps"],
        "tcp_mb_per_s / raw_bulk_relay_mb_per_s": res["tcp_mb_per_s"] / res["raw_bulk_relay_mb_per_s"],
        "rtt_p50_us / raw_rtt_p50_us": res["rtt_p50_us"] / res["raw_rtt_p50_us"],
    }


GOALS = {
    "udp_pps / raw_single_relay_pps": (">=", 2.0),
    "udp_pps / raw_batch_relay_pps": (">=", 0.10),
    "tcp_mb_per_s / raw_bulk_relay_mb_per_s": (">=", 0.05),
    "rtt_p50_us / raw_rtt_p50_us": ("<=", 1.5),
}


def report(res: dict[str, Any]) -> str:
    lines = [f"{'figure':<40} {'value':>14}"]
    for key, value in res.items():
        if key != "ratios":
            lines.append(f"{key:<40} {value:>14,.1f}" if isinstance(value, float) else f"{key:<40} {value!s:>14}")
    lines.append("")
    lines.append(f"{'ratio (same run)':<40} {'value':>8}  {'target':>8}  met")
    for key, value in res["ratios"].items():
        op, goal = GOALS[key]
        met = value >= goal if op == ">=" else value <= goal
        lines.append(f"{key:<40} {value:>8.3f}  {op} {goal:<5}  {'yes' if met else 'NO'}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    ns = ap.parse_args()
    os.environ.setdefault("HCINET_STATE_DIR", tempfile.mkdtemp(prefix="hcinet-bench-"))
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    res["raw_single_relay_pps"] = raw.raw_single_relay_pps(100_000 if ns.quick else 300_000)
    res["raw_batch_relay_pps"] = raw.raw_batch_relay_pps(20_000 if ns.quick else 60_000)
    res["raw_bulk_relay_mb_per_s"] = raw.raw_bulk_relay_mb_per_s(5_000 if ns.quick else 20_000)
    res["raw_rtt_p50_us"], res["raw_rtt_p99_us"] = raw.raw_rtt_us(1000 if ns.quick else 3000)
    res.update(trio.run(emulated, ns.quick))
    res["seconds"] = time.monotonic() - t0
    res["ratios"] = ratios(res)
    print(json.dumps(res, indent=2) if ns.json else report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
