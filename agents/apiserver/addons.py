"""Cluster addons the API server creates at bootstrap: CoreDNS (kubeadm's ``addon/coredns`` phase).

What ``kubeadm init`` (1.26) applies for DNS (``cmd/kubeadm/app/phases/addons/dns``,
``manifests.go``), as objects of this API server:

* ``kube-system/coredns`` ConfigMap -- the ``Corefile`` (:data:`~agents.dns.corefile.KUBEADM_COREFILE`);
* ``kube-system/coredns`` Deployment -- 2 replicas, ``k8s-app: kube-dns``, image
  ``registry.k8s.io/coredns/coredns:v1.9.3`` (kubeadm 1.26's ``CoreDNSVersion``), args
  ``-conf /etc/coredns/Corefile`` with the ConfigMap mounted there, ports dns 53/UDP, dns-tcp
  53/TCP, metrics 9153/TCP, readiness ``GET /ready :8181``, liveness ``GET /health :8080``,
  ``nodeSelector kubernetes.io/os: linux`` (CoreDNS has no Windows build: the AKS-HCI docs'
  reason every Linux-less cluster lacks DNS), tolerations for ``CriticalAddonsOnly`` and the
  control-plane taint, ``dnsPolicy: Default`` (the pod asks the node's resolvers upstream),
  ``priorityClassName: system-cluster-critical``, a preferred anti-affinity per hostname;
* ``kube-system/kube-dns`` Service -- ``clusterIP`` 10.96.0.10 (the allocator reserves it for
  this Service), selector ``k8s-app: kube-dns``, ports dns 53/UDP, dns-tcp 53/TCP, metrics
  9153/TCP.

The ServiceAccount and RBAC objects of that phase are left out: this API server has neither
kind (it does not authorize).  :func:`ensure_addons` creates what is absent and never touches
what exists (a scaled Deployment, an edited Corefile survive a restart), so it is idempotent
across API server restarts.  It runs through the :class:`~.rest.Router` (defaulting,
validation, the Service allocator's admission), inside one store batch.
"""

from __future__ import annotations

from typing import Any

from agents.dns.corefile import KUBEADM_COREFILE

from .resources import resource
from .rest import Router
from .services import DNS_IP

__all__ = ["COREDNS_IMAGE", "COREDNS_REPLICAS", "coredns_configmap", "coredns_deployment", "coredns_objects",
           "ensure_addons", "kube_dns_service"]

COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.9.3"
COREDNS_REPLICAS = 2      # kubeadm: Replicas 2
KUBE_SYSTEM = "kube-system"
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"
_DNS_LABELS = {"k8s-app": "kube-dns"}

Obj = dict[str, Any]


def coredns_configmap(corefile: str = KUBEADM_COREFILE) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": KUBE_SYSTEM},
            "data": {"Corefile": corefile}}


def coredns_deployment(replicas: int = COREDNS_REPLICAS, image: str = COREDNS_IMAGE) -> Obj:
    container = {
        "name": "coredns", "image": image, "imagePullPolicy": "IfNotPresent",
        "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
        "args": ["-conf", "/etc/coredns/Corefile"],
        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
        "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                  {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                  {"containerPort": 9153, "name": "metrics", "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                          "initialDelaySeconds": 60, "timeoutSeconds": 5, "successThreshold": 1,
                          "failureThreshold": 5},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"}},
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
    }
    anti_affinity = {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {"labelSelector": {"matchExpressions": [
            {"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]},
            "topologyKey": "kubernetes.io/hostname"}}]}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": KUBE_SYSTEM, "labels": dict(_DNS_LABELS)},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "selector": {"matchLabels": dict(_DNS_LABELS)},
            "template": {
                "metadata": {"labels": dict(_DNS_LABELS)},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": "coredns",
                    "affinity": {"podAntiAffinity": anti_affinity},
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [container],
                    "dnsPolicy": "Default",
                    "volumes": [{"name": "config-volume", "configMap": {
                        "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                },
            },
        },
    }


def kube_dns_service(cluster_ip: str = DNS_IP) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": KUBE_SYSTEM,
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                "kubernetes.io/name": "CoreDNS"},
                     "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
        "spec": {"clusterIP": cluster_ip,
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                           {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}],
                 "selector": dict(_DNS_LABELS)},
    }


def coredns_objects(*, replicas: int = COREDNS_REPLICAS, image: str = COREDNS_IMAGE,
                    dns_ip: str = DNS_IP, corefile: str = KUBEADM_COREFILE) -> list[tuple[str, Obj]]:
    """(resource plural, object) in kubeadm's order: ConfigMap, Deployment, Service."""
    return [("configmaps", coredns_configmap(corefile)), ("deployments", coredns_deployment(replicas, image)),
            ("services", kube_dns_service(dns_ip))]


def ensure_addons(router: Router, objects: list[tuple[str, Obj]] | None = None) -> list[str]:
    """Create each addon object that does not exist; returns ``plural/namespace/name`` of those
    created (empty when everything was there: nothing is written)."""
    store = router.store
    created: list[str] = []
    with store.batch():
        for plural, obj in objects if objects is not None else coredns_objects():
            meta = obj["metadata"]
            if store.exists(plural, meta["namespace"], meta["name"]):
                continue
            router.create(resource(plural), meta["namespace"], obj)
            created.append(f"{plural}/{meta['namespace']}/{meta['name']}")
    return created
