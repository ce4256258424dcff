"""``hcinet policy matrix -f``: manifests only, no deployment; and the loader behind it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scenarios import cli, policy

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}, creationTimestamp: null}
spec:
  containers: [{name: c, image: busybox}]
status: {podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: web
    image: nginx
    ports: [{name: http, containerPort: 8080}]
status: {podIPs: [{ip: 10.244.1.20}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec:
  containers: [{name: c, image: busybox}]
status: {podIP: 10.244.0.30}
"""

DENY_WEB = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop, creationTimestamp: null}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
status: {}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["policy", "matrix", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    rc, out, err = run(capsys, *argv, "-o", "json")
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)  # stdout is the JSON document and nothing else
    return doc


def verdict(doc: dict[str, Any], src: str, dst: str, port: int, proto: str = "TCP") -> bool:
    hits = [v["allowed"] for v in doc["verdicts"]
            if (v["src"], v["dst"], v["port"], v["protocol"]) == (src, dst, port, proto)]
    assert len(hits) == 1, (src, dst, port, proto, hits)
    return bool(hits[0])


# --- the JSON shape -----------------------------------------------------------------------------

def test_json_is_the_exact_shape_one_verdict_per_ordered_pair_and_port(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "pods.yaml", PODS)
    doc = run_json(capsys, "-f", f, "--port", "80/TCP", "--port", "53/udp")
    assert set(doc) == {"pods", "verdicts"}
    assert doc["pods"] == ["shop/client", "shop/other", "shop/web"]
    assert len(doc["verdicts"]) == 3 * 2 * 2
    for v in doc["verdicts"]:
        assert set(v) == {"src", "dst", "port", "protocol", "allowed"}
        assert v["src"] != v["dst"]
        assert isinstance(v["port"], int) and v["protocol"] in ("TCP", "UDP")
        assert v["allowed"] is True  # no policy: everything is allowed
    pairs = {(v["src"], v["dst"], v["port"], v["protocol"]) for v in doc["verdicts"]}
    assert len(pairs) == len(doc["verdicts"])


def test_a_policy_denies_what_it_does_not_allow_named_port_resolved_on_the_destination(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "all.yaml", PODS + "---\n" + DENY_WEB)
    doc = run_json(capsys, "-f", f, "--port", "8080/TCP", "--port", "80/TCP")
    assert verdict(doc, "shop/client", "shop/web", 8080) is True   # the named port "http" is 8080 on web
    assert verdict(doc, "shop/client", "shop/web", 80) is False    # selected by the policy: other ports denied
    assert verdict(doc, "shop/other", "shop/web", 8080) is False   # not from app=client
    assert verdict(doc, "shop/web", "shop/other", 80) is True      # egress is not restricted


def test_externals_are_participants_but_not_pods_any_ip_literal(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "pods.yaml", PODS)
    externals = ["0.0.0.0", "255.255.255.255", "2001:db8::1", "8.8.8.8"]
    args = [a for e in externals for a in ("--external", e)]
    doc = run_json(capsys, "-f", f, "--port", "80/TCP", *args)
    assert doc["pods"] == ["shop/client", "shop/other", "shop/web"]
    for e in externals:
        for p in doc["pods"]:
            assert verdict(doc, f"ip:{e}", p, 80) is True
            assert verdict(doc, p, f"ip:{e}", 80) is True


def test_ipblock_matches_only_pods_with_an_address_and_externals(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "m.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: known, labels: {app: a}}
        status: {podIP: 10.1.2.3}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: unknown, labels: {app: a}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: server, labels: {app: server}}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: from-block}
        spec:
          podSelector: {matchLabels: {app: server}}
          ingress:
          - from: [{ipBlock: {cidr: 10.0.0.0/8}}]
        """)
    doc = run_json(capsys, "-f", f, "--port", "80/TCP", "--external", "10.9.9.9", "--external", "192.0.2.1")
    assert verdict(doc, "default/known", "default/server", 80) is True
    assert verdict(doc, "default/unknown", "default/server", 80) is False  # no address: ipBlock cannot match
    assert verdict(doc, "ip:10.9.9.9", "default/server", 80) is True
    assert verdict(doc, "ip:192.0.2.1", "default/server", 80) is False


# --- what the loader accepts --------------------------------------------------------------------

def test_a_deployment_is_one_representative_pod_named_after_it(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "deploy.yaml", """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api, namespace: prod, creationTimestamp: null}
        spec:
          replicas: 3
          selector: {matchLabels: {app: api}}
          template:
            metadata: {labels: {app: api}, creationTimestamp: null}
            spec:
              containers:
              - {name: api, image: x, ports: [{name: grpc, containerPort: 9000}]}
        status: {}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: caller, namespace: prod}
        spec:
          selector: {matchLabels: {app: caller}}
          template:
            metadata: {labels: {app: caller}}
            spec: {containers: [{name: c, image: x}]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: api-grpc, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: api}}
          ingress: [{ports: [{port: grpc}]}]
        """)
    doc = run_json(capsys, "-f", f, "--port", "9000/TCP", "--port", "80/TCP")
    assert doc["pods"] == ["prod/api", "prod/caller"]
    assert verdict(doc, "prod/caller", "prod/api", 9000) is True
    assert verdict(doc, "prod/caller", "prod/api", 80) is False


def test_a_policy_without_namespace_is_in_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "m.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b, namespace: other}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-all}
        spec: {podSelector: {}}
        """)
    doc = run_json(capsys, "-f", f, "--port", "80/TCP")
    assert verdict(doc, "other/b", "default/a", 80) is False  # default's pods are isolated
    assert verdict(doc, "default/a", "other/b", 80) is True   # other's are not


def test_kubectl_style_documents_lists_and_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "d/1-pods.yaml", """
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: Pod
          metadata: {name: a, namespace: team, labels: {role: fe}, creationTimestamp: null}
          spec: {containers: [{name: c, image: x}]}
          status: {}
        - apiVersion: v1
          kind: Pod
          metadata: {name: b, namespace: team, labels: {role: be}}
        """)
    write(tmp_path, "d/2-svc.json", json.dumps({"apiVersion": "v1", "kind": "Service",
                                                "metadata": {"name": "ignored"}, "spec": {"ports": [{"port": 80}]}}))
    write(tmp_path, "d/notes.txt", "not a manifest: a directory is read for *.yaml|*.yml|*.json only")
    write(tmp_path, "d/sub/3-pol.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: be, namespace: team}
        spec:
          podSelector: {matchLabels: {role: be}}
          policyTypes: [Ingress]
        """)
    d = str(tmp_path / "d")
    doc = run_json(capsys, "-f", d, "--port", "80/TCP")
    assert doc["pods"] == ["team/a", "team/b"]
    assert verdict(doc, "team/a", "team/b", 80) is True   # sub/ not read without -R
    doc = run_json(capsys, "-f", d, "-R", "--port", "80/TCP")
    assert verdict(doc, "team/a", "team/b", 80) is False


def test_undeclared_namespaces_exist_with_their_name_label(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "m.yaml", """
        apiVersion: v1
        kind: Namespace
        metadata: {name: declared, labels: {team: blue}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: x, namespace: declared}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: y, namespace: implied}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: db, namespace: data}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: db, namespace: data}
        spec:
          podSelector: {}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: implied}}}]
          - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
            ports: [{port: 5432}]
        """)
    doc = run_json(capsys, "-f", f, "--port", "80/TCP", "--port", "5432/TCP")
    assert verdict(doc, "implied/y", "data/db", 80) is True
    assert verdict(doc, "declared/x", "data/db", 80) is False
    assert verdict(doc, "declared/x", "data/db", 5432) is True
    inv = policy.load_manifests([f])
    assert inv.all_namespaces()["implied"] == {"kubernetes.io/metadata.name": "implied"}
    assert inv.all_namespaces()["declared"] == {"team": "blue", "kubernetes.io/metadata.name": "declared"}


def test_calico_policies_from_files_apply_with_their_order(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "m.yaml", PODS + """
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-other-first}
spec:
  order: 10
  selector: app == 'web'
  ingress:
  - action: Deny
    source: {selector: app == 'other'}
  - action: Allow
""")
    doc = run_json(capsys, "-f", f, "--port", "80/TCP")
    assert verdict(doc, "shop/other", "shop/web", 80) is False
    assert verdict(doc, "shop/client", "shop/web", 80) is True


def test_the_loader_keeps_addresses_labels_and_named_ports(tmp_path: Path) -> None:
    inv = policy.load_manifests([write(tmp_path, "p.yaml", PODS)])
    web = inv.pods["shop/web"]
    assert web.ips == ["10.244.1.20"] and web.labels == {"app": "web"}
    assert web.ports == [("http", "TCP", 8080)]
    assert inv.pods["shop/client"].ips == ["10.244.0.10"]


# --- table output -------------------------------------------------------------------------------

def test_the_table_is_a_matrix_per_port_with_a_legend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "all.yaml", PODS + "---\n" + DENY_WEB)
    rc, out, err = run(capsys, "-f", f, "--port", "8080/TCP", "--port", "53/UDP")
    assert rc == 0, err
    assert "legend:" in out and "✓ allowed" in out and "✗ denied" in out
    assert "8080/TCP: 5 of 6 allowed" in out  # client -> web on the named port
    assert "53/UDP: 4 of 6 allowed" in out
    rows = [line for line in out.splitlines() if line.startswith("2 shop/other")]
    assert rows and rows[0].split()[2:] == ["✓", "·", "✗"]  # other -> client, self, web


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "needle"), [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a\n", "error converting YAML"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 10.0.0.300}\n", "status.podIP"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
     "spec:\n  podSelector: {matchExpressions: [{key: a, operator: Bogus}]}\n", "NetworkPolicy default/p"),
    ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n"
     "spec:\n  selector: \"app == \"\n", "position"),
    ("- just\n- a list\n", "must be a map"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: 5}\n", "spec.containers: expected a list"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: 5}]}\n",
     "spec.containers[0].ports: expected a list"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIPs: 5}\n", "status.podIPs: expected a list"),
    ("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: a}\nspec: {jobTemplate: [1]}\n",
     "spec.jobTemplate: expected an object"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n"
     "spec: {containers: [{name: c, ports: [{name: http, containerPort: 80, protocol: FOO}]}]}\n",
     "spec.containers[0].ports[0].protocol: Unsupported value"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}\n",
     "containerPort: expected an integer 1-65535"),
])
def test_bad_manifests_are_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    text: str, needle: str) -> None:
    f = write(tmp_path, "bad.yaml", text)
    rc, out, err = run(capsys, "-f", f, "--port", "80/TCP", "-o", "json")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "bad.yaml" in err and needle in err, err


def test_a_missing_path_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "-f", str(tmp_path / "nope.yaml"), "--port", "80/TCP")
    assert rc == 1 and "nope.yaml" in err and "does not exist" in err


@pytest.mark.parametrize("args", [["--port", "80/ICMP"], ["--port", "http"], ["--port", "70000/TCP"],
                                  ["--port", "80/TCP", "--external", "10.0.0.1/24"],
                                  ["--port", "80/TCP", "--external", "example.com"],
                                  ["--port", "80/TCP", "--external", "fe80::1%eth0"], []])
def test_bad_flags_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    f = write(tmp_path, "pods.yaml", PODS)
    with pytest.raises(SystemExit) as exc:
        cli.main(["policy", "matrix", "-f", f, *args])
    assert exc.value.code == 2
    assert capsys.readouterr().out == ""


def test_port_and_ip_arguments() -> None:
    assert policy.port_arg("80") == (80, "TCP")
    assert policy.port_arg("53/udp") == (53, "UDP")
    assert policy.port_arg("9000/SCTP") == (9000, "SCTP")
    assert policy.ip_arg("2001:DB8::0001") == "2001:db8::1"
    assert policy.ip_arg("255.255.255.255") == "255.255.255.255"
