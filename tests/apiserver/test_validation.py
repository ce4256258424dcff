"""Field validation: Kubernetes' messages, Status details."""

from __future__ import annotations

from typing import Any

import pytest

from agents.apiserver import validation
from agents.apiserver.errors import StatusError
from agents.apiserver.resources import resource


def refuse(plural: str, obj: dict) -> StatusError:
    with pytest.raises(StatusError) as e:
        validation.validate(resource(plural), obj)
    assert e.value.code == 422 and e.value.reason == "Invalid"
    return e.value


def test_name_rules() -> None:
    e = refuse("nodes", {"metadata": {"name": "A_b"}})
    assert e.message == ('Node "A_b" is invalid: metadata.name: Invalid value: "A_b": a lowercase RFC 1123 '
                         "subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
                         "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
                         "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    assert e.details == {"name": "A_b", "kind": "Node", "causes": [
        {"reason": "FieldValueInvalid", "field": "metadata.name", "message": e.message.split("metadata.name: ", 1)[1]}]}
    e = refuse("nodes", {"metadata": {}})
    assert e.message == 'Node "" is invalid: metadata.name: Required value: name or generateName is required'
    e = refuse("namespaces", {"metadata": {"name": "a.b"}})
    assert "a lowercase RFC 1123 label must consist of" in e.message
    e = refuse("services", {"metadata": {"name": "1abc", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}})
    assert 'metadata.name: Invalid value: "1abc": a DNS-1035 label must consist of' in e.message
    e = refuse("configmaps", {"metadata": {"name": "x" * 254, "namespace": "default"}})
    assert "must be no more than 253 characters" in e.message
    validation.validate(resource("nodes"), {"metadata": {"name": "node-1.example"}})


def test_namespace_and_labels() -> None:
    e = refuse("pods", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert e.message == 'Pod "p" is invalid: metadata.namespace: Required value'
    e = refuse("configmaps", {"metadata": {"name": "c", "namespace": "default", "labels": {"a": "bad value"}}})
    assert 'metadata.labels: Invalid value: "bad value": a valid label must be an empty string' in e.message


def test_kind_specific_required_fields() -> None:
    e = refuse("deployments", {"metadata": {"name": "d", "namespace": "default"}, "spec": {}})
    assert e.message == 'Deployment "d" is invalid: [spec.selector: Required value, spec.template.spec.containers: ' \
                        'Required value]'
    assert e.details is not None and e.details["group"] == "apps"
    e = refuse("replicasets", {"metadata": {"name": "r", "namespace": "default"},
                               "spec": {"selector": {"matchLabels": {"app": "a"}},
                                        "template": {"metadata": {"labels": {"app": "b"}},
                                                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    assert 'spec.template.metadata.labels: Invalid value: map[string]string{"app":"b"}: `selector` does not ' \
           "match template `labels`" in e.message
    e = refuse("pods", {"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c"}]}})
    assert e.message == 'Pod "p" is invalid: spec.containers[0].image: Required value'
    e = refuse("services", {"metadata": {"name": "s", "namespace": "default"}, "spec": {"type": "Foo", "ports": [
        {"port": 80}]}})
    assert 'spec.type: Unsupported value: "Foo": supported values: "ClusterIP", "ExternalName", "LoadBalancer", ' \
           '"NodePort"' in e.message
    e = refuse("services", {"metadata": {"name": "s", "namespace": "default"}, "spec": {"ports": [{"port": 70000}]}})
    assert "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive" in e.message
    e = refuse("endpointslices", {"metadata": {"name": "s", "namespace": "default"}, "endpoints": []})
    assert e.message == 'EndpointSlice "s" is invalid: addressType: Required value'
    e = refuse("endpointslices", {"metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4",
                                  "endpoints": [{"addresses": ["10.0.0.300"]}]})
    assert 'endpoints[0].addresses[0]: Invalid value: "10.0.0.300": must be a valid IP address' in e.message
    e = refuse("secrets", {"metadata": {"name": "s", "namespace": "default"}, "data": {"k": "!!"}})
    assert "data[k]: Invalid value" in e.message and "illegal base64 data" in e.message
    e = refuse("leases", {"metadata": {"name": "l", "namespace": "kube-node-lease"},
                          "spec": {"leaseDurationSeconds": 0}})
    assert "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0" in e.message
    e = refuse("nodes", {"metadata": {"name": "n"}, "spec": {"taints": [{"key": "k", "effect": "Nope"}]}})
    assert 'spec.taints[0].effect: Unsupported value: "Nope"' in e.message
    e = refuse("ingresses", {"metadata": {"name": "i", "namespace": "default"}, "spec": {}})
    assert "either `defaultBackend` or `rules` must be specified" in e.message


def test_type_check() -> None:
    validation.check_type(resource("pods"), {"metadata": {}})  # missing apiVersion/kind: the path's
    with pytest.raises(StatusError) as e:
        validation.check_type(resource("pods"), {"apiVersion": "v1", "kind": "Service"})
    assert e.value.code == 400 and "the kind in the data (Service) does not match the expected kind (Pod)" in \
        e.value.message
    with pytest.raises(StatusError) as e:
        validation.check_type(resource("deployments"), {"apiVersion": "v1", "kind": "Deployment"})
    assert e.value.message == "the API version in the data (v1) does not match the expected API version (apps/v1)"


def test_hook_for_deeper_checks() -> None:
    @validation.register_validator("ConfigMap")
    def no_forbidden(obj: Any, old: Any) -> list[validation.FieldError]:
        return [validation.invalid("data", "x", "forbidden key")] if "forbidden" in (obj.get("data") or {}) else []

    try:
        e = refuse("configmaps", {"metadata": {"name": "c", "namespace": "default"}, "data": {"forbidden": "1"}})
        assert 'data: Invalid value: "x": forbidden key' in e.message
    finally:
        validation.VALIDATORS["ConfigMap"].remove(no_forbidden)


def test_a_container_port_protocol_must_be_tcp_udp_or_sctp() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default"},
           "spec": {"containers": [{"name": "c", "image": "x",
                                    "ports": [{"name": "http", "containerPort": 80, "protocol": "FOO"}]}]}}
    e = refuse("pods", pod)
    assert 'spec.containers[0].ports[0].protocol: Unsupported value: "FOO"' in e.message, e.message
