"""CoreDNS inside its pod: the kubernetes plugin's watches, the zone, DNS on port 53 (asyncio).

:func:`coredns_dns_factory` is the ``dns`` factory the ``coredns`` container app
(:class:`agents.node.containers.CoreDnsApp`) calls once its health (8080), ready (8181) and
metrics (9153) endpoints listen.  On the pod's own network API it does what the CoreDNS
process does at start (plugin/kubernetes ``InitKubeCache``/``onStart``, Caddy's start order):

1. reads the Corefile (the ``kube-system/coredns`` ConfigMap's ``Corefile`` key, which the
   real kubelet mounts at ``/etc/coredns``; kubeadm's default when there is none) and builds
   the :class:`~agents.dns.zone.Zone` from its ``kubernetes`` block (``ttl``, ``pods``...),
   with ``ns.dns.cluster.local`` -> 10.96.0.10;
2. starts informers (list, then watch with resume; relist on 410 Gone) on Services,
   EndpointSlices and Namespaces -- and Pods only with ``pods verified``, as the plugin's
   ``initPodCache`` -- through the API server address it is given, *from inside the pod's
   network namespace*; every event goes to the zone as it arrives;
3. waits for their initial lists, at most ``startup_timeout`` (CoreDNS: 5 s, then "starting
   server with unsynced Kubernetes API");
4. serves DNS on ``0.0.0.0:53`` UDP and TCP (:mod:`agents.dns.server`), forwarding what is not
   ``cluster.local`` to ``upstream`` (``forward . /etc/resolv.conf``: with the Deployment's
   ``dnsPolicy: Default`` the pod's resolv.conf is the node's, i.e. the network's
   ``dnsServers``), address order shuffled when the Corefile has ``loadbalance``.

The returned :class:`ClusterDns` has ``ready`` (the ready plugin's verdict for the kubernetes
plugin: every informer has synced its initial list -- ``/ready`` answers 503 until then),
``close()`` (sync: what the app calls when the container stops), ``aclose()`` and ``stats()``.
A Corefile CoreDNS refuses raises :class:`~agents.dns.corefile.CorefileError` (the container
exits at start, as the real one does).

The kubelet's call (agents/node/vm.py, the node VM's ``app_kwargs`` hook for coredns plans)::

    from functools import partial
    from agents.dns.coredns import STARTUP_TIMEOUT, coredns_dns_factory
    from agents.dns.resolver import CLUSTER_DNS, resolv_conf_of

    def _app_kwargs(self, plan):
        if plan.app != "coredns":
            return {}
        cfg = self.kubelet_config
        return {"dns": partial(
            coredns_dns_factory,
            kube=f"{cfg.apiserver_host}:{cfg.apiserver_port}",          # the API server VIP:6443
            upstream=[ip for ip in resolv_conf_of(self).nameservers       # the node VM's config
                      if ip != CLUSTER_DNS],                              # ``dns.nameservers``
            startup_timeout=Timers(cfg.time_scale).scaled(STARTUP_TIMEOUT))}

(``Timers`` from agents.timers.)  ``make_container_app(pod_net, plan, hostname=pod_name,
dns=<that partial>)`` then calls it as ``await factory(pod_net, plan)``.  ``kube`` may also be a
ready :class:`KubeClient` (used as it is, not closed here).

The API server VIP and the datacenter DNS sit on the node's own subnet.  Where the CNI does
not masquerade pod traffic to that subnet (Flannel's exception list here), their replies go
to the pod address through the datacenter gateway and are lost: the informers never sync
(``/ready`` stays 503, kube-dns gets no endpoints) and forwarded names SERVFAIL.  Passing
``egress=<the node's network API>`` sends the API watches and the upstream queries out the
node's way (as a ``hostNetwork`` pod's would) while DNS is still served on the pod's address.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from agents.kube.client import ApiError, Informer, KubeClient, api_path
from agents.vm.http import ProtocolError

from .corefile import KUBEADM_COREFILE, RESOLV_CONF, CorefileOptions
from .resolver import CLUSTER_DNS
from .server import DNS_PORT, DnsServer
from .zone import Zone

__all__ = ["ClusterDns", "STARTUP_TIMEOUT", "coredns_dns_factory", "parse_api_address"]

log = logging.getLogger("hcinet.dns.coredns")

STARTUP_TIMEOUT = 5.0          # plugin/kubernetes onStart: wait this long for the caches to sync
CLIENT_TIMEOUT = 10.0          # client-go's default request timeout is none; bounded here
MAX_UPSTREAMS = 15             # plugin/forward: "max 15 upstreams"
COREFILE_CONFIGMAP = ("kube-system", "coredns", "Corefile")

# informer name -> (resource, kind); pods only in ``pods verified`` mode (initPodCache)
_WATCHED = {"services": "Service", "endpointslices": "EndpointSlice", "namespaces": "Namespace"}
_PODS = {"pods": "Pod"}


def parse_api_address(address: str) -> tuple[str, int]:
    """``10.0.0.100:6443``, ``https://10.0.0.100:6443`` or ``10.0.0.100`` (port 6443)."""
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError(f"kube: expected HOST[:PORT] of the API server, got {address!r}")
    try:
        port = int(port_text) if port_text else 6443
    except ValueError:
        raise ValueError(f"kube: bad port in {address!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"kube: bad port in {address!r}")
    return host, port


class ClusterDns:
    """One CoreDNS process's kubernetes plugin and DNS server (see the module docstring)."""

    def __init__(self, zone: Zone, client: KubeClient, options: CorefileOptions, *, owns_client: bool,
                 idle_timeout: float | None = None) -> None:
        self.zone = zone
        self.client = client
        self.options = options
        self.owns_client = owns_client
        self.informers: dict[str, Informer] = {}
        self.server: DnsServer | None = None
        self.upstream: tuple[str, ...] = ()
        self.started_unsynced = False
        self._idle_timeout = idle_timeout
        self._tasks: list[asyncio.Task[None]] = []
        self.counts = {"added": 0, "updated": 0, "deleted": 0, "handler_errors": 0}

    # -- the kubernetes plugin's caches --

    def start_informers(self) -> None:
        watched = dict(_WATCHED, **(_PODS if self.options.pods == "verified" else {}))
        for plural, kind in watched.items():
            kwargs: dict[str, Any] = {} if self._idle_timeout is None else {"idle_timeout": self._idle_timeout}
            informer = Informer(self.client, api_path(plural),
                                on_add=lambda obj, k=kind: self._put(k, obj, "added"),
                                on_update=lambda _old, obj, k=kind: self._put(k, obj, "updated"),
                                on_delete=lambda obj, k=kind: self._delete(k, obj), **kwargs)
            self.informers[plural] = informer
            self._tasks.append(informer.start())

    def _put(self, kind: str, obj: dict[str, Any], count: str) -> None:
        try:
            self.zone.update(obj if obj.get("kind") else {**obj, "kind": kind})
        except ValueError:
            self.counts["handler_errors"] += 1
            log.debug("zone: %s %s refused", kind, (obj.get("metadata") or {}).get("name"), exc_info=True)
            return
        self.counts[count] += 1

    def _delete(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            self.zone.remove(obj if obj.get("kind") else {**obj, "kind": kind})
        except ValueError:
            self.counts["handler_errors"] += 1
            return
        self.counts["deleted"] += 1

    @property
    def ready(self) -> bool:
        """The ready plugin's answer for the kubernetes plugin: ``APIConn.HasSynced()``."""
        return bool(self.informers) and all(inf.synced.is_set() for inf in self.informers.values())

    async def wait_synced(self, timeout: float) -> bool:
        waits = [asyncio.ensure_future(inf.synced.wait()) for inf in self.informers.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), max(0.0, timeout))
        except TimeoutError:
            return False
        finally:
            for w in waits:
                w.cancel()
        return True

    # -- the server --

    async def serve(self, net: Any, host: str, port: int, upstream: Sequence[str],
                    rng: random.Random | None, *, egress: Any = None) -> None:
        self.upstream = tuple(upstream)
        server = DnsServer(self.zone, self.upstream, rng=rng)
        self.server = await server.start(net, host, port)
        if egress is not None:
            server.net = egress  # upstream queries leave through it (DnsServer asks on .net)

    def close(self) -> None:
        """Stop serving and watching (sync: the container app calls it from its stop)."""
        if self.server is not None:
            self.server.close()
        for task in self._tasks:
            task.cancel()
        if self.owns_client:
            self.client.http.close()

    async def aclose(self) -> None:
        self.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def stats(self) -> dict[str, Any]:
        return {"ready": self.ready, "started_unsynced": self.started_unsynced,
                "informers": {name: {"synced": inf.synced.is_set(), "lists": inf.lists, "events": inf.events,
                                     "resourceVersion": inf.resource_version, "objects": len(inf.cache)}
                              for name, inf in self.informers.items()},
                "zone_serial": self.zone.serial, "upstream": list(self.upstream), **self.counts,
                "dns": self.server.stats() if self.server is not None else None,
                "corefile": asdict(self.options)}


def _upstream(options: CorefileOptions, resolv_conf: Iterable[str], own: Iterable[str]) -> list[str]:
    """``forward . TO...``: ``/etc/resolv.conf`` expands to the pod's nameservers.  Our own
    addresses are dropped: forwarding to ourselves is the loop the ``loop`` plugin exists to
    catch (the real CoreDNS then exits; here the entry is ignored, with a warning)."""
    out: list[str] = []
    for target in options.forward:
        out += list(resolv_conf) if target == RESOLV_CONF else [target]
    own_set = set(own)
    looping = [ip for ip in out if ip in own_set]
    if looping:
        log.warning("plugin/loop: not forwarding to our own address(es) %s", ", ".join(looping))
    return list(dict.fromkeys(ip for ip in out if ip not in own_set))[:MAX_UPSTREAMS]


async def _read_corefile(client: KubeClient, timeout: float) -> str:
    """The ConfigMap's Corefile (what the kubelet's configMap volume holds); kubeadm's default
    when it is missing or the API server cannot be asked in time."""
    ns, name, key = COREFILE_CONFIGMAP
    try:
        cm = await asyncio.wait_for(client.get(api_path("configmaps", ns, name)), max(0.0, timeout))
    except ApiError as exc:
        log.info("configmap %s/%s: %s; using kubeadm's Corefile", ns, name, exc)
        return KUBEADM_COREFILE
    except (OSError, TimeoutError, ProtocolError, ValueError) as exc:
        log.warning("configmap %s/%s unreadable (%s: %s); using kubeadm's Corefile", ns, name,
                    type(exc).__name__, exc)
        return KUBEADM_COREFILE
    text = (cm.get("data") or {}).get(key)
    return text if isinstance(text, str) and text.strip() else KUBEADM_COREFILE


async def coredns_dns_factory(net: Any, plan: Any = None, *, kube: KubeClient | str,
                              upstream: Sequence[str] = (), corefile: str | None = None,
                              startup_timeout: float = STARTUP_TIMEOUT, host: str = "0.0.0.0",
                              port: int = DNS_PORT, ns_ips: Sequence[str] = (CLUSTER_DNS,),
                              rng: random.Random | None = None, client_timeout: float = CLIENT_TIMEOUT,
                              idle_timeout: float | None = None, egress: Any = None) -> ClusterDns:
    """Start CoreDNS's kubernetes plugin and DNS server on ``net`` (the pod's network API).

    ``kube``: the API server as ``HOST:PORT`` (the VIP:6443; a client is made on ``net``) or a
    :class:`KubeClient`; ``upstream``: the nameservers ``/etc/resolv.conf`` stands for (the
    node's ``dns.nameservers``); ``corefile``: its text (None: read the ConfigMap).  ``plan``
    (the container's :class:`~agents.node.images.ContainerPlan`) is accepted for the factory
    signature ``(net, plan)`` and otherwise unused.  ``egress``: the network API the API
    client and the upstream queries use (None: ``net``; the node's, to give CoreDNS the
    node's way out as a ``hostNetwork`` pod has -- DNS is still served on ``net``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout
    if isinstance(kube, str):
        api_host, api_port = parse_api_address(kube)
        client, owns = KubeClient(egress if egress is not None else net, api_host, api_port, timeout=client_timeout,
                                  user_agent="coredns/v1.9.3 (linux/amd64) kubernetes/plugin"), True
    else:
        client, owns = kube, False
    dns: ClusterDns | None = None
    try:
        text = corefile if corefile is not None else await _read_corefile(client, deadline - loop.time())
        options = CorefileOptions.from_text(text, port=port)
        zone = Zone(options.domain, ttl=options.ttl, pods=options.pods,
                    endpoint_pod_names=options.endpoint_pod_names, ns_ips=ns_ips, reverse=options.reverse)
        dns = ClusterDns(zone, client, options, owns_client=owns, idle_timeout=idle_timeout)
        dns.start_informers()
        if not await dns.wait_synced(deadline - loop.time()):
            dns.started_unsynced = True
            log.warning("plugin/kubernetes: starting server with unsynced Kubernetes API")
        shuffle = (rng or random.Random()) if options.loadbalance else None
        await dns.serve(net, host, port, _upstream(options, upstream, ns_ips), shuffle, egress=egress)
    except BaseException:
        if dns is not None:
            await dns.aclose()
        elif owns:
            client.http.close()
        raise
    return dns
