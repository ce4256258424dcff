"""projectcalico.org/v3 resources beside Kubernetes' own: (group, kind) keys, validation
through the policy model, the default IPPools, and the CLI's resolution of both groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.apiserver import validation
from agents.apiserver.calico import cluster_cidrs, ensure_ippools
from agents.apiserver.resources import BY_GROUP_KIND, BY_KIND, BY_PLURAL, CALICO_GROUP
from agents.apiserver.rest import Router
from agents.apiserver.store import Store
from scenarios import manifests

CNP = "/apis/projectcalico.org/v3/namespaces/default/networkpolicies"
KNP = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"


def router(tmp_path: Path) -> Router:
    r = Router(Store(str(tmp_path / "s.sqlite")))
    r.bootstrap()
    return r


def call(r: Router, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    res = r.handle(method, path, None, body)
    return res.status, res.body


def test_both_network_policies_live_side_by_side(tmp_path: Path) -> None:
    r = router(tmp_path)
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    cnp = {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": "p"},
           "spec": {"selector": "app == 'web'", "order": 10, "ingress": [{"action": "Deny"}]}}
    assert call(r, "POST", KNP, knp)[0] == 201
    assert call(r, "POST", CNP, cnp)[0] == 201
    k, c = call(r, "GET", f"{KNP}/p")[1], call(r, "GET", f"{CNP}/p")[1]
    assert k["apiVersion"] == "networking.k8s.io/v1" and "podSelector" in k["spec"]
    assert c["apiVersion"] == "projectcalico.org/v3" and c["spec"]["order"] == 10
    assert call(r, "DELETE", f"{CNP}/p")[0] == 200
    assert call(r, "GET", f"{KNP}/p")[0] == 200 and call(r, "GET", f"{CNP}/p")[0] == 404


def test_bad_selector_or_cidr_is_422_naming_field_and_position(tmp_path: Path) -> None:
    r = router(tmp_path)
    gnp = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
           "spec": {"selector": "app == ", "ingress": [{"action": "Allow"}]}}
    status, body = call(r, "POST", "/apis/projectcalico.org/v3/globalnetworkpolicies", gnp)
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.selector", body
    assert "position 7" in body["message"], body
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "b"},
           "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}
    status, body = call(r, "POST", KNP, knp)
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.ingress[0].from[0].ipBlock.cidr", body
    assert '"10.0.0.0/33"' in body["message"], body
    # upstream's message for policyTypes stays
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "c"},
           "spec": {"podSelector": {}, "policyTypes": ["Sideways"]}}
    status, body = call(r, "POST", KNP, knp)
    assert status == 422 and len(body["details"]["causes"]) == 1 and "Unsupported value" in body["message"]


def test_default_ippools_and_pool_validation(tmp_path: Path) -> None:
    r = router(tmp_path)
    assert cluster_cidrs({}) == ["10.244.0.0/16"]
    assert cluster_cidrs({"cluster_cidr": "10.244.0.0/16,fd00:10:244::/56"}) == ["10.244.0.0/16",
                                                                                 "fd00:10:244::/56"]
    assert ensure_ippools(r, ["10.244.0.0/16"]) == ["default-ipv4-ippool"]
    assert ensure_ippools(r, ["10.244.0.0/16"]) == []  # idempotent
    pool = call(r, "GET", "/apis/projectcalico.org/v3/ippools/default-ipv4-ippool")[1]
    assert pool["spec"] == {"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Always",
                            "natOutgoing": True, "nodeSelector": "all()"}
    bad = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "x"},
           "spec": {"cidr": "10.0.0.0/8", "blockSize": 40, "vxlanMode": "Sometimes"}}
    status, body = call(r, "POST", "/apis/projectcalico.org/v3/ippools", bad)
    fields = {c["field"] for c in body["details"]["causes"]}
    assert status == 422 and fields == {"spec.blockSize", "spec.vxlanMode"}, body
    hep = {"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint", "metadata": {"name": "h"}, "spec": {}}
    status, body = call(r, "POST", "/apis/projectcalico.org/v3/hostendpoints", hep)
    assert status == 422 and "spec.node" in body["message"], body


def test_keys_by_group_and_kind_keep_bare_kinds_kubernetes() -> None:
    assert BY_KIND["NetworkPolicy"].group == "networking.k8s.io"
    assert BY_GROUP_KIND[(CALICO_GROUP, "NetworkPolicy")].api_version == "projectcalico.org/v3"
    assert BY_PLURAL["networkpolicies"].group == "networking.k8s.io"
    assert BY_PLURAL["networkpolicies.projectcalico.org"].group == CALICO_GROUP
    assert validation.VALIDATORS["NetworkPolicy"] is validation.VALIDATORS[("networking.k8s.io", "NetworkPolicy")]
    assert (CALICO_GROUP, "NetworkPolicy") in validation.VALIDATORS
    assert manifests.resource_named("networkpolicies.projectcalico.org").group == CALICO_GROUP
    assert manifests.resource_named("netpol").group == "networking.k8s.io"
    assert manifests.resource_named("globalnetworkpolicies").kind == "GlobalNetworkPolicy"


def test_apply_resolves_calico_manifests_and_flannel_warning(tmp_path: Path) -> None:
    f = tmp_path / "gnp.yaml"
    f.write_text("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n"
                 "spec: {selector: all(), types: [Ingress]}\n")
    ms, errors = manifests.load([str(f)], False, None)
    assert not errors and ms[0].res.group == CALICO_GROUP and ms[0].namespace is None
    assert manifests.is_policy(ms[0].res)
    assert manifests.policy_warning("c1", "flannel") == (
        "Warning: cluster c1 uses flannel, which does not enforce network policy; "
        "the policy is stored but not enforced")
    assert manifests.policy_warning("c1", "calico") is None
