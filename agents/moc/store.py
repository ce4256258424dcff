"""The cloud agent's state in sqlite (WAL): what MOC owns must survive MOC's own restart.

Tables: ``networks`` (validated documents and the broker segment they attach to),
``clusters`` (spec, network, node-pool reservation, API server VIP, warnings), ``nodepools``,
``vms`` (name, kind, cluster, pool, network, ips, mac, desired state, the VM config given to
the host agent), ``vips`` (VIP allocations), ``loadbalancers`` (cluster, VIP, the lbagent
config with its frontends/backends, whether it is programmed) and ``meta`` (the host agent
event cursor).  IP pools are not stored as such: they are rebuilt from these rows.

Every write commits before it returns (or at the end of :meth:`Store.tx`); with WAL and
``synchronous=NORMAL`` a committed write survives a crash of the process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY, segment TEXT NOT NULL, spec TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, network TEXT NOT NULL, spec TEXT NOT NULL, reservation INTEGER NOT NULL,
    vip TEXT, warnings TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodepools (
    cluster TEXT NOT NULL, name TEXT NOT NULL, os_type TEXT NOT NULL, count INTEGER NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (cluster, name));
CREATE TABLE IF NOT EXISTS vms (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, cluster TEXT, pool TEXT, network TEXT NOT NULL,
    ips TEXT NOT NULL, mac TEXT NOT NULL, desired TEXT NOT NULL, config TEXT NOT NULL,
    seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vips (
    network TEXT NOT NULL, ip TEXT NOT NULL, cluster TEXT NOT NULL, holder TEXT NOT NULL,
    port INTEGER, PRIMARY KEY (network, ip, cluster, holder));
CREATE TABLE IF NOT EXISTS loadbalancers (
    name TEXT PRIMARY KEY, cluster TEXT NOT NULL, network TEXT NOT NULL, vip TEXT NOT NULL,
    sku TEXT NOT NULL, lb_vm TEXT, config TEXT NOT NULL, programmed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

DESIRED_STATES = ("running", "stopped")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterRow:
    name: str
    network: str
    spec: dict[str, Any]  # ClusterSpec.doc() without nodePools (they live in their own table)
    reservation: int
    vip: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePoolRow:
    cluster: str
    name: str
    os_type: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VmRecord:
    name: str
    kind: str  # moc VM kinds: apiserver | haproxy | node | plain (clients)
    cluster: str | None
    pool: str | None  # node pool; "control-plane" / "lb" for those VMs; None for clients
    network: str
    ips: list[str]
    mac: str
    desired: str  # running | stopped
    config: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class VipRow:
    network: str
    ip: str
    cluster: str
    holder: str
    port: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LbRecord:
    name: str
    cluster: str
    network: str
    vip: str
    sku: str
    lb_vm: str | None  # the HAProxy VM; None with sku none (kube-vip)
    config: dict[str, Any]  # the lbagent document: vips, frontends, backends
    programmed: bool


class Store:
    """A thin, synchronous sqlite store; one connection, used from one thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[None]:
        """Group writes into one transaction (nested calls join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    def _seq(self, table: str) -> int:
        row = self._db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return int(row[0])

    # -- networks --

    def put_network(self, name: str, segment: str, spec: dict[str, Any]) -> None:
        with self.tx():
            old = self._db.execute("SELECT seq FROM networks WHERE name = ?", (name,)).fetchone()
            seq = old[0] if old else self._seq("networks")
            self._db.execute("INSERT OR REPLACE INTO networks VALUES (?, ?, ?, ?)",
                             (name, segment, json.dumps(spec), seq))

    def delete_network(self, name: str) -> None:
        self._db.execute("DELETE FROM networks WHERE name = ?", (name,))

    def networks(self) -> list[tuple[dict[str, Any], str]]:
        """``(spec, segment)`` in creation order."""
        rows = self._db.execute("SELECT spec, segment FROM networks ORDER BY seq").fetchall()
        return [(json.loads(spec), segment) for spec, segment in rows]

    # -- clusters and node pools --

    def put_cluster(self, row: ClusterRow) -> None:
        with self.tx():
            old = self._db.execute("SELECT seq FROM clusters WHERE name = ?", (row.name,)).fetchone()
            seq = old[0] if old else self._seq("clusters")
            self._db.execute("INSERT OR REPLACE INTO clusters VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (row.name, row.network, json.dumps(row.spec), row.reservation, row.vip,
                              json.dumps(row.warnings), seq))

    def set_reservation(self, cluster: str, reservation: int) -> None:
        self._db.execute("UPDATE clusters SET reservation = ? WHERE name = ?", (reservation, cluster))

    def delete_cluster(self, name: str) -> None:
        """The cluster and everything that hangs off it: node pools, VIPs, load balancers, VMs."""
        with self.tx():
            for table in ("nodepools", "vips", "loadbalancers", "vms"):
                self._db.execute(f"DELETE FROM {table} WHERE cluster = ?", (name,))
            self._db.execute("DELETE FROM clusters WHERE name = ?", (name,))

    def clusters(self) -> list[ClusterRow]:
        rows = self._db.execute(
            "SELECT name, network, spec, reservation, vip, warnings FROM clusters ORDER BY seq").fetchall()
        return [ClusterRow(name=n, network=net, spec=json.loads(s), reservation=r, vip=v, warnings=json.loads(w))
                for n, net, s, r, v, w in rows]

    def put_nodepool(self, row: NodePoolRow) -> None:
        with self.tx():
            old = self._db.execute("SELECT seq FROM nodepools WHERE cluster = ? AND name = ?",
                                   (row.cluster, row.name)).fetchone()
            seq = old[0] if old else self._seq("nodepools")
            self._db.execute("INSERT OR REPLACE INTO nodepools VALUES (?, ?, ?, ?, ?)",
                             (row.cluster, row.name, row.os_type, row.count, seq))

    def delete_nodepool(self, cluster: str, name: str) -> None:
        self._db.execute("DELETE FROM nodepools WHERE cluster = ? AND name = ?", (cluster, name))

    def nodepools(self, cluster: str | None = None) -> list[NodePoolRow]:
        sql = "SELECT cluster, name, os_type, count FROM nodepools"
        params: tuple[Any, ...] = ()
        if cluster is not None:
            sql += " WHERE cluster = ?"
            params = (cluster,)
        rows = self._db.execute(sql + " ORDER BY seq", params).fetchall()
        return [NodePoolRow(cluster=c, name=n, os_type=o, count=k) for c, n, o, k in rows]

    # -- VMs --

    def put_vm(self, vm: VmRecord) -> None:
        if vm.desired not in DESIRED_STATES:
            raise ValueError(f"desired: expected running or stopped, got {vm.desired!r}")
        with self.tx():
            old = self._db.execute("SELECT seq FROM vms WHERE name = ?", (vm.name,)).fetchone()
            seq = old[0] if old else self._seq("vms")
            self._db.execute("INSERT OR REPLACE INTO vms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (vm.name, vm.kind, vm.cluster, vm.pool, vm.network, json.dumps(vm.ips),
                              vm.mac, vm.desired, json.dumps(vm.config), seq))

    def set_desired(self, name: str, desired: str) -> None:
        if desired not in DESIRED_STATES:
            raise ValueError(f"desired: expected running or stopped, got {desired!r}")
        self._db.execute("UPDATE vms SET desired = ? WHERE name = ?", (desired, name))

    def delete_vm(self, name: str) -> None:
        self._db.execute("DELETE FROM vms WHERE name = ?", (name,))

    def vms(self) -> list[VmRecord]:
        rows = self._db.execute(
            "SELECT name, kind, cluster, pool, network, ips, mac, desired, config FROM vms ORDER BY seq").fetchall()
        return [VmRecord(name=n, kind=k, cluster=c, pool=p, network=net, ips=json.loads(ips), mac=mac,
                         desired=d, config=json.loads(cfg)) for n, k, c, p, net, ips, mac, d, cfg in rows]

    # -- VIPs --

    def put_vip(self, row: VipRow) -> None:
        self._db.execute("INSERT OR REPLACE INTO vips VALUES (?, ?, ?, ?, ?)",
                         (row.network, row.ip, row.cluster, row.holder, row.port))

    def delete_vip(self, cluster: str, holder: str) -> None:
        self._db.execute("DELETE FROM vips WHERE cluster = ? AND holder = ?", (cluster, holder))

    def vips(self) -> list[VipRow]:
        rows = self._db.execute("SELECT network, ip, cluster, holder, port FROM vips ORDER BY rowid").fetchall()
        return [VipRow(network=n, ip=i, cluster=c, holder=h, port=p) for n, i, c, h, p in rows]

    # -- load balancers --

    def put_lb(self, lb: LbRecord) -> None:
        self._db.execute("INSERT OR REPLACE INTO loadbalancers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (lb.name, lb.cluster, lb.network, lb.vip, lb.sku, lb.lb_vm, json.dumps(lb.config),
                          int(lb.programmed)))

    def set_programmed(self, name: str, programmed: bool) -> None:
        self._db.execute("UPDATE loadbalancers SET programmed = ? WHERE name = ?", (int(programmed), name))

    def delete_lb(self, name: str) -> None:
        self._db.execute("DELETE FROM loadbalancers WHERE name = ?", (name,))

    def lbs(self) -> list[LbRecord]:
        rows = self._db.execute(
            "SELECT name, cluster, network, vip, sku, lb_vm, config, programmed FROM loadbalancers "
            "ORDER BY rowid").fetchall()
        return [LbRecord(name=n, cluster=c, network=net, vip=v, sku=s, lb_vm=vm, config=json.loads(cfg),
                         programmed=bool(p)) for n, c, net, v, s, vm, cfg, p in rows]

    # -- meta --

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def event_cursor(self) -> int:
        """The last host-agent event seq MOC has acted on."""
        return int(self.get_meta("hostagent_event_cursor", 0))

    def set_event_cursor(self, seq: int) -> None:
        self.set_meta("hostagent_event_cursor", int(seq))
