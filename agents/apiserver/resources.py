"""The API resources this server serves: plural name, group/version, kind, scope, subresources.

One table, shared by the store (error messages name ``deployments.apps``), validation (kinds,
name rules) and the REST router (paths).  Kubernetes' discovery documents say the same things
(``kubectl api-resources``).
"""

from __future__ import annotations

from dataclasses import dataclass

CALICO_GROUP = "projectcalico.org"  # the Calico API server's group (projectcalico.org/v3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    plural: str
    group: str  # "" = the core group (/api/v1)
    version: str
    kind: str
    namespaced: bool
    has_status: bool  # a status subresource: PUT /status changes only status, PUT keeps it
    name_rule: str = "subdomain"  # subdomain | label (RFC 1123) | dns1035 (Service names)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How Kubernetes names the resource in messages: ``nodes``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def group_kind(self) -> tuple[str, str]:
        return (self.group, self.kind)

    @property
    def store_key(self) -> str:
        """The store's table for this resource: the plural, except for Calico's resources,
        whose plurals collide with Kubernetes' own (both groups serve ``networkpolicies``)."""
        return self.qualified if self.group == CALICO_GROUP else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource(plural="namespaces", group="", version="v1", kind="Namespace", namespaced=False,
             has_status=True, name_rule="label"),
    Resource(plural="nodes", group="", version="v1", kind="Node", namespaced=False, has_status=True),
    Resource(plural="pods", group="", version="v1", kind="Pod", namespaced=True, has_status=True),
    Resource(plural="services", group="", version="v1", kind="Service", namespaced=True, has_status=True,
             name_rule="dns1035"),
    Resource(plural="endpoints", group="", version="v1", kind="Endpoints", namespaced=True, has_status=False),
    Resource(plural="secrets", group="", version="v1", kind="Secret", namespaced=True, has_status=False),
    Resource(plural="configmaps", group="", version="v1", kind="ConfigMap", namespaced=True, has_status=False),
    Resource(plural="events", group="", version="v1", kind="Event", namespaced=True, has_status=False),
    Resource(plural="deployments", group="apps", version="v1", kind="Deployment", namespaced=True,
             has_status=True),
    Resource(plural="replicasets", group="apps", version="v1", kind="ReplicaSet", namespaced=True,
             has_status=True),
    Resource(plural="leases", group="coordination.k8s.io", version="v1", kind="Lease", namespaced=True,
             has_status=False),
    Resource(plural="endpointslices", group="discovery.k8s.io", version="v1", kind="EndpointSlice",
             namespaced=True, has_status=False),
    Resource(plural="networkpolicies", group="networking.k8s.io", version="v1", kind="NetworkPolicy",
             namespaced=True, has_status=False),
    Resource(plural="ingresses", group="networking.k8s.io", version="v1", kind="Ingress", namespaced=True,
             has_status=True),
    # Calico's own API (served by the Calico API server beside Kubernetes'): policy, pools, hosts
    Resource(plural="networkpolicies", group=CALICO_GROUP, version="v3", kind="NetworkPolicy", namespaced=True,
             has_status=False),
    Resource(plural="globalnetworkpolicies", group=CALICO_GROUP, version="v3", kind="GlobalNetworkPolicy",
             namespaced=False, has_status=False),
    Resource(plural="ippools", group=CALICO_GROUP, version="v3", kind="IPPool", namespaced=False,
             has_status=False),
    Resource(plural="hostendpoints", group=CALICO_GROUP, version="v3", kind="HostEndpoint", namespaced=False,
             has_status=False),
)

BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}
# A bare plural or kind names Kubernetes' own resource (as kubectl resolves ``networkpolicies``
# to networking.k8s.io); Calico's are reached by their qualified name
# (``networkpolicies.projectcalico.org``, as ``kubectl get`` with the Calico API server) or by
# (group, kind).
BY_PLURAL: dict[str, Resource] = {
    **{r.qualified: r for r in RESOURCES},
    **{r.plural: r for r in reversed(RESOURCES) if r.group != CALICO_GROUP},
    **{r.plural: r for r in RESOURCES if r.group == CALICO_GROUP and r.kind != "NetworkPolicy"},
}
BY_GROUP_KIND: dict[tuple[str, str], Resource] = {r.group_kind: r for r in RESOURCES}
BY_KIND: dict[str, Resource] = {r.kind: r for r in reversed(RESOURCES) if r.group != CALICO_GROUP}
for _r in RESOURCES:
    BY_KIND.setdefault(_r.kind, _r)
GROUP_VERSIONS: dict[str, str] = {r.group: r.version for r in RESOURCES if r.group}


def resource(plural: str) -> Resource:
    try:
        return BY_PLURAL[plural]
    except KeyError:
        raise KeyError(f"resource: unknown resource {plural!r}") from None
