"""nslookup (BIND 9's output) over the DNS test world, with a pod's and a VM's resolver config."""

from __future__ import annotations

from types import SimpleNamespace

from dns_world import COREDNS, DCDNS, SILENT, World, run

from agents.dns.resolver import ResolvConf
from agents.dns.server import serve_dns
from agents.dns.zone import Answer, Record
from agents.vm.tools import run_tool
from broker import packets as P

HEAD = f"Server:\t\t{COREDNS}\nAddress:\t{COREDNS}#53\n\n"
DC_HEAD = f"Server:\t\t{DCDNS}\nAddress:\t{DCDNS}#53\n\n"


def in_pod(w: World) -> None:
    w.client.resolv_conf = ResolvConf.for_pod("prod")  # type: ignore[attr-defined]


def test_service_name_from_a_pod() -> None:
    async def scenario(w: World) -> None:
        in_pod(w)
        assert await run_tool(w.client, ["nslookup", "backend"]) == (
            0, HEAD + "Name:\tbackend.prod.svc.cluster.local\nAddress: 10.96.0.15\n\n", "")
        rc, out, _ = await run_tool(w.client, ["nslookup", "db.prod"])
        assert rc == 0 and out == HEAD + ("Name:\tdb.prod.svc.cluster.local\nAddress: 10.244.1.20\n"
                                          "Name:\tdb.prod.svc.cluster.local\nAddress: 10.244.2.21\n\n")
        rc, out, _ = await run_tool(w.client, ["nslookup", "dual"])
        assert rc == 0 and out == HEAD + ("Name:\tdual.prod.svc.cluster.local\nAddress: 10.96.0.20\n"
                                          "Name:\tdual.prod.svc.cluster.local\nAddress: fd00:10:96::20\n\n")
    run(scenario)


def test_external_name_shows_the_canonical_name() -> None:
    async def scenario(w: World) -> None:
        in_pod(w)
        assert await run_tool(w.client, ["nslookup", "ext"]) == (0, HEAD + (
            "ext.prod.svc.cluster.local\tcanonical name = db.corp.example.\n"
            "Name:\tdb.corp.example\nAddress: 172.16.0.50\n\n"), "")
    run(scenario)


def test_nxdomain_exits_1() -> None:
    async def scenario(w: World) -> None:
        in_pod(w)
        assert await run_tool(w.client, ["nslookup", "nothere"]) == (
            1, HEAD + "** server can't find nothere: NXDOMAIN\n\n", "")
        # ndots reached: the name as is first, then the search list; the last one tried is named
        rc, out, _ = await run_tool(w.client, ["nslookup", "a.b.c.d.e.f"])
        assert rc == 1 and out == HEAD + "** server can't find a.b.c.d.e.f.cluster.local: NXDOMAIN\n\n"
    run(scenario)


def test_name_without_addresses() -> None:
    async def scenario(w: World) -> None:
        in_pod(w)
        assert await run_tool(w.client, ["nslookup", "prod"]) == (
            0, HEAD + "*** Can't find prod.svc.cluster.local: No answer\n\n", "")
    run(scenario)


def test_srv_and_ptr() -> None:
    async def scenario(w: World) -> None:
        in_pod(w)
        assert await run_tool(w.client, ["nslookup", "-type=SRV", "_http._tcp.backend"]) == (0, HEAD + (
            "_http._tcp.backend.prod.svc.cluster.local\tservice = 0 100 80 backend.prod.svc.cluster.local.\n\n"), "")
        assert await run_tool(w.client, ["nslookup", "-q=srv", "_pg._tcp.db.prod.svc.cluster.local."]) == (
            0, HEAD + "".join(f"_pg._tcp.db.prod.svc.cluster.local\tservice = 0 50 5432 {t}.db.prod.svc.cluster.local.\n"
                              for t in ("db-0", "10-244-2-21")) + "\n", "")
        assert await run_tool(w.client, ["nslookup", "10.96.0.15"]) == (
            0, HEAD + "15.0.96.10.in-addr.arpa\tname = backend.prod.svc.cluster.local.\n\n", "")
    run(scenario)


def test_vm_outside_the_cluster_uses_its_dns_config() -> None:
    async def scenario(w: World) -> None:
        w.client.config = SimpleNamespace(raw={"dns": {"nameservers": [DCDNS], "search": ["corp.example"]}})  # type: ignore[attr-defined]
        assert await run_tool(w.client, ["nslookup", "www"]) == (0, DC_HEAD + (
            "www.corp.example\tcanonical name = db.corp.example.\nName:\tdb.corp.example\nAddress: 172.16.0.50\n\n"), "")
        rc, out, _ = await run_tool(w.client, ["nslookup", "backend.prod.svc.cluster.local"])
        assert rc == 1 and out == DC_HEAD + "** server can't find backend.prod.svc.cluster.local.corp.example: NXDOMAIN\n\n"
        # a server named on the command line
        rc, out, _ = await run_tool(w.client, ["nslookup", "backend.prod.svc.cluster.local", COREDNS])
        assert rc == 0 and out == HEAD + "Name:\tbackend.prod.svc.cluster.local\nAddress: 10.96.0.15\n\n"
        w.client.config = SimpleNamespace(raw={"dns": {"nameservers": "oops"}})  # type: ignore[attr-defined]
        rc, _, err = await run_tool(w.client, ["nslookup", "www"])
        assert rc == 1 and "dns.nameservers" in err
    run(scenario)


def test_non_authoritative_answers() -> None:
    async def scenario(w: World) -> None:
        vm = w.net.add_vm("recursor", "172.16.0.4")

        def handler(qname: str, qtype: str) -> Answer:
            data = {"A": "192.0.2.1", "MX": "10 mx.web.example."}.get(qtype)
            recs = (Record(qname, qtype, 60, data),) if data else ()
            return Answer(answers=recs, authoritative=False)
        server = await serve_dns(vm, "0.0.0.0", 53, handler)
        try:
            head = "Server:\t\t172.16.0.4\nAddress:\t172.16.0.4#53\n\n"
            assert await run_tool(w.client, ["nslookup", "web.example", "172.16.0.4"]) == (
                0, head + "Non-authoritative answer:\nName:\tweb.example\nAddress: 192.0.2.1\n\n", "")
            assert await run_tool(w.client, ["nslookup", "-type=mx", "web.example", "172.16.0.4"]) == (
                0, head + "Non-authoritative answer:\nweb.example\tmail exchanger = 10 mx.web.example.\n\n"
                "Authoritative answers can be found from:\n\n", "")
        finally:
            server.close()
    run(scenario)


def test_no_server_answers() -> None:
    async def scenario(w: World) -> None:
        w.net.drop = lambda pkt: pkt[P.DST] == SILENT
        w.client.config = SimpleNamespace(raw={"dns": {"nameservers": [SILENT]}})  # type: ignore[attr-defined]
        assert await run_tool(w.client, ["nslookup", "-timeout=1", "-retry=1", "www.corp.example"]) == (
            1, ";; connection timed out; no servers could be reached\n\n", "")
    run(scenario)


def test_usage_errors() -> None:
    async def scenario(w: World) -> None:
        rc, out, err = await run_tool(w.client, ["nslookup"])
        assert rc == 1 and out == "" and "Usage: nslookup" in err
        rc, _, err = await run_tool(w.client, ["nslookup", "-type=BOGUS", "x"])
        assert rc == 1 and "unknown query type" in err
        rc, _, err = await run_tool(w.client, ["nslookup", "x", "dns.example"])
        assert rc == 1 and err == "nslookup: couldn't get address for 'dns.example': not found\n"
    run(scenario)
