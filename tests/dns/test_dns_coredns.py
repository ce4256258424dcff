"""CoreDNS in its pod over the in-process fabric, against the real API service: the coredns
container app with :func:`coredns_dns_factory` as its ``dns`` hook, watching the API server
from the pod's own stack.  A Service created later resolves within a second; unknown names are
NXDOMAIN; other names go to the upstream (the datacenter DNS); ``/ready`` is 503 until the
informers synced and 200 after; the watch resumes across an API server restart; the Corefile of
the ConfigMap is what it runs (ttl 30, ``pods verified``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
import uvloop
from vm_loopnet import LoopNet

from agents.apiserver.addons import coredns_deployment, ensure_addons
from agents.apiserver.controllers import ensure_kubernetes_service
from agents.apiserver.rest import Router
from agents.apiserver.services import ServiceAllocator
from agents.apiserver.store import Store
from agents.apiserver.vm import ApiService
from agents.dns.coredns import ClusterDns, coredns_dns_factory, parse_api_address
from agents.dns.corefile import KUBEADM_COREFILE
from agents.dns.datacenter import StaticZone
from agents.dns.server import query, serve_dns
from agents.kube.client import KubeClient, api_path
from agents.node.containers import CoreDnsApp, make_container_app
from agents.node.images import ContainerPlan, plan_container
from agents.vm.http import http_request
from agents.vm.streams import AsyncStack
from broker import packets as P

API, POD, CLIENT, DCDNS = "172.16.0.20", "172.16.0.30", "172.16.0.40", "172.16.0.2"


class ApiServer:
    """The API service on its stack; stop/start keeps the sqlite store (a restart)."""

    def __init__(self, net: AsyncStack, path: str) -> None:
        self.net, self.path = net, path
        self.store: Store | None = None
        self.service: ApiService | None = None

    async def start(self) -> None:
        self.store = Store(self.path)
        router = Router(self.store)
        router.bootstrap()
        ServiceAllocator(rng=random.Random(3)).install(self.store)
        ensure_kubernetes_service(self.store, API)
        ensure_addons(router)
        self.service = ApiService(self.store, router, asyncio.get_running_loop())
        await self.service.serve(self.net, port=6443)

    async def stop(self) -> None:
        assert self.service is not None and self.store is not None
        await self.service.close()
        self.store.close()
        self.service = self.store = None


@dataclass
class World:
    api: ApiServer
    pod: AsyncStack
    client: AsyncStack
    kube: KubeClient                   # a user's client (from the client VM)
    app: CoreDnsApp | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def core(self) -> ClusterDns:
        assert self.app is not None and isinstance(self.app.dns, ClusterDns)
        return self.app.dns

    async def start_coredns(self, **kwargs: Any) -> CoreDnsApp:
        kwargs.setdefault("startup_timeout", 2.0)
        factory = partial(coredns_dns_factory, kube=f"{API}:6443", upstream=[DCDNS, "10.96.0.10"], **kwargs)
        app = make_container_app(self.pod, coredns_plan(), hostname="coredns-5d78c9869d-x7k2p", dns=factory)
        assert isinstance(app, CoreDnsApp)
        self.app = app
        await app.start()
        return app

    async def ask(self, name: str, qtype: str = "A", *, tcp: bool = False) -> dns.message.Message:
        return await query(self.client, POD, name, qtype, timeout=1.0, tcp=tcp)

    async def ready_status(self) -> tuple[int, bytes]:
        resp = await http_request(self.client, "GET", f"http://{POD}:8181/ready", timeout=1.0)
        return resp.status, resp.body


def coredns_plan() -> ContainerPlan:
    container = coredns_deployment()["spec"]["template"]["spec"]["containers"][0]
    plan = plan_container(container, "linux")
    assert isinstance(plan, ContainerPlan) and plan.app == "coredns"
    return plan


def run(tmp_path: Path, scenario: Callable[[World], Awaitable[Any]], *, api_up: bool = True,
        timeout: float = 15.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        api = ApiServer(net.add_vm("cp", API), str(tmp_path / "api.sqlite"))
        pod = net.add_vm("coredns-pod", POD)
        client = net.add_vm("client", CLIENT)
        dc = await serve_dns(net.add_vm("dcdns", DCDNS), "0.0.0.0", 53, StaticZone(
            [{"name": "db.corp.example", "type": "A", "value": "172.16.0.50"}], zones=["corp.example"]))
        if api_up:
            await api.start()
        world = World(api, pod, client, KubeClient(client, API, 6443, timeout=2.0), extra={"net": net})
        try:
            return await asyncio.wait_for(scenario(world), timeout)
        finally:
            if world.app is not None:
                await world.app.stop()
                if isinstance(world.app.dns, ClusterDns):
                    await world.app.dns.aclose()
            await world.kube.close()
            dc.close()
            if api.service is not None:
                await api.stop()
    return uvloop.run(main())


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype in (1, 28))


async def until(check: Callable[[], Awaitable[bool]], limit: float) -> float:
    """Seconds until ``check`` holds (polled every 10 ms); fails after ``limit``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not await check():
        assert loop.time() - t0 < limit, f"not within {limit} s"
        await asyncio.sleep(0.01)  # polling the DNS server from the client, as a test harness
    return loop.time() - t0


def service(name: str, ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}], **spec}}


# --- tests ---------------------------------------------------------------------------------


def test_service_created_later_resolves_within_a_second(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await w.start_coredns()
        assert w.core.ready and not w.core.started_unsynced
        assert await w.ready_status() == (200, b"OK")
        reply = await w.ask("kubernetes.default.svc.cluster.local")
        assert addresses(reply) == ["10.96.0.1"] and reply.answer[0].ttl == 30  # ttl 30: the ConfigMap's Corefile
        nx = await w.ask("backend.prod.svc.cluster.local")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == 6  # SOA in authority
        assert (await w.ask("nothing.default.svc.cluster.local", tcp=True)).rcode() == dns.rcode.NXDOMAIN
        await w.kube.create(api_path("namespaces"), {"metadata": {"name": "prod"}})
        created = await w.kube.create(api_path("services", "prod"), service("backend", "prod"))
        ip = created["spec"]["clusterIP"]

        async def resolves() -> bool:
            return addresses(await w.ask("backend.prod.svc.cluster.local")) == [ip]

        assert await until(resolves, 1.0) < 1.0
        # the name goes away with the Service
        await w.kube.delete(api_path("services", "prod", "backend"))

        async def gone() -> bool:
            return (await w.ask("backend.prod.svc.cluster.local")).rcode() == dns.rcode.NXDOMAIN

        await until(gone, 1.0)
        # not ours: forwarded to the node's nameserver (its own 10.96.0.10 was dropped: a loop)
        assert w.core.upstream == ("172.16.0.2",)
        fwd = await w.ask("db.corp.example")
        assert addresses(fwd) == ["172.16.0.50"]  # the upstream's reply, passed on as it is
        assert (await w.ask("nope.corp.example")).rcode() == dns.rcode.NXDOMAIN
        stats = w.core.stats()
        assert stats["ready"] and stats["informers"]["services"]["lists"] == 1
        assert set(stats["informers"]) == {"services", "endpointslices", "namespaces"}  # no pods: insecure
        assert stats["dns"]["forwarded"] >= 2

    run(tmp_path, scenario)


def test_ready_flips_to_200_once_the_informers_synced(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await w.start_coredns(startup_timeout=0.3)  # the API server is not up: CoreDNS waits, then serves
        assert 0.25 <= loop.time() - t0 < 1.0
        assert w.core.started_unsynced and not w.core.ready
        assert await w.ready_status() == (503, b"kubernetes")
        # it answers, from empty caches
        assert (await w.ask("kubernetes.default.svc.cluster.local")).rcode() == dns.rcode.NXDOMAIN
        assert w.core.options.ttl == 30  # no ConfigMap readable: kubeadm's Corefile
        await w.api.start()

        async def ready() -> bool:
            return (await w.ready_status())[0] == 200

        await until(ready, 5.0)
        assert addresses(await w.ask("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]

    run(tmp_path, scenario, api_up=False)


def test_watch_resumes_across_an_api_server_restart(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await w.start_coredns(idle_timeout=1.0)
        await w.api.stop()
        store = Store(w.api.path)  # written while CoreDNS is cut off
        ServiceAllocator().install(store)
        store.create("services", service("late"))
        store.close()
        await w.api.start()

        async def resolves() -> bool:
            return len(addresses(await w.ask("late.default.svc.cluster.local"))) == 1

        await until(resolves, 5.0)
        informer = w.core.informers["services"]
        assert informer.lists == 1 and w.core.client.watch_reconnects >= 1  # resumed, not relisted

    run(tmp_path, scenario)


def test_the_configmaps_corefile_is_what_runs(tmp_path: Path) -> None:
    verified = KUBEADM_COREFILE.replace("pods insecure", "pods verified").replace("ttl 30", "ttl 7")

    async def scenario(w: World) -> None:
        assert w.api.store is not None
        w.api.store.patch("configmaps", "kube-system", "coredns", {"data": {"Corefile": verified}})
        w.api.store.create("pods", {"metadata": {"name": "web", "namespace": "default"},
                                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                                    "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}})
        await w.start_coredns()
        assert "pods" in w.core.informers and w.core.options.pods == "verified"
        hit = await w.ask("10-244-1-5.default.pod.cluster.local")
        assert addresses(hit) == ["10.244.1.5"] and hit.answer[0].ttl == 7
        # verified: an address no pod of that namespace has is NXDOMAIN (insecure would answer)
        assert (await w.ask("10-244-1-6.default.pod.cluster.local")).rcode() == dns.rcode.NXDOMAIN
        assert (await w.ask("10-244-1-5.kube-system.pod.cluster.local")).rcode() == dns.rcode.NXDOMAIN

    run(tmp_path, scenario)


def test_a_corefile_coredns_refuses_fails_the_start(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        with pytest.raises(ValueError, match="wrong value for pods"):
            await w.start_coredns(corefile=".:53 {\n kubernetes cluster.local {\n pods maybe\n }\n}\n")
        w.app = None

    run(tmp_path, scenario)


def test_stopping_the_container_stops_dns_and_watches(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        app = await w.start_coredns()
        cluster_dns = w.core
        await app.stop()
        await cluster_dns.aclose()
        with pytest.raises((ConnectionRefusedError, TimeoutError, OSError)):
            await query(w.client, POD, "kubernetes.default.svc.cluster.local", timeout=0.3)
        assert all(t.done() for t in cluster_dns._tasks) or not cluster_dns._tasks
        w.app = None

    run(tmp_path, scenario)


def test_egress_through_another_stack(tmp_path: Path) -> None:
    """A pod that cannot reach the API server or the upstream itself (the Flannel exception
    list on the node subnet): with ``egress`` (the node's network API) it syncs and forwards."""
    async def scenario(w: World) -> None:
        net: LoopNet = w.extra["net"]
        node = net.add_vm("node", "172.16.0.31")
        net.drop = lambda pkt: pkt[P.SRC] == POD and pkt[P.DST] in (API, DCDNS)
        await w.start_coredns(egress=node)
        assert w.core.ready and not w.core.started_unsynced
        assert addresses(await w.ask("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
        assert addresses(await w.ask("db.corp.example")) == ["172.16.0.50"]

    run(tmp_path, scenario)


def test_without_a_way_out_it_never_becomes_ready(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        net: LoopNet = w.extra["net"]
        net.drop = lambda pkt: pkt[P.SRC] == POD and pkt[P.DST] in (API, DCDNS)
        await w.start_coredns(startup_timeout=0.3, client_timeout=0.2)
        await asyncio.sleep(0.3)
        assert not w.core.ready and await w.ready_status() == (503, b"kubernetes")
        # the upstream does not answer either: SERVFAIL after forward's ~2 s budget
        reply = await query(w.client, POD, "db.corp.example", "A", timeout=3.0)
        assert reply.rcode() == dns.rcode.SERVFAIL

    run(tmp_path, scenario)


@pytest.mark.parametrize("text, want", [
    ("10.0.0.100:6443", ("10.0.0.100", 6443)), ("https://10.0.0.100:6443/", ("10.0.0.100", 6443)),
    ("10.0.0.100", ("10.0.0.100", 6443)), ("[fd00::1]:443", ("fd00::1", 443)),
])
def test_api_address(text: str, want: tuple[str, int]) -> None:
    assert parse_api_address(text) == want


@pytest.mark.parametrize("text", ["", ":6443", "10.0.0.1:x", "10.0.0.1:70000"])
def test_bad_api_address(text: str) -> None:
    with pytest.raises(ValueError):
        parse_api_address(text)

