"""Image references, the known-image table, and what a container runs on each OS."""

from __future__ import annotations

from typing import Any

import pytest

from agents.node.images import (
    KNOWN_IMAGES,
    ContainerPlan,
    ContainerPort,
    ImageError,
    InvalidImageName,
    lookup,
    parse_image,
    plan_container,
    pull_backoff,
    resolve,
)

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"


@pytest.mark.parametrize("image, canonical, familiar", [
    ("nginx", "docker.io/library/nginx:latest", "nginx"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox"),
    ("hashicorp/http-echo:1.0", "docker.io/hashicorp/http-echo:1.0", "hashicorp/http-echo"),
    ("docker.io/library/nginx:1.25", "docker.io/library/nginx:1.25", "nginx"),
    ("index.docker.io/curlimages/curl", "docker.io/curlimages/curl:latest", "curlimages/curl"),
    (AGNHOST, AGNHOST, "registry.k8s.io/e2e-test-images/agnhost"),
    ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1", "localhost:5000/team/app"),
    ("localhost/app", "localhost/app:latest", "localhost/app"),
    ("nginx@sha256:" + "a" * 64, "docker.io/library/nginx@sha256:" + "a" * 64, "nginx"),
    ("nginx:1.25@sha256:" + "b" * 64, "docker.io/library/nginx:1.25@sha256:" + "b" * 64, "nginx"),
    ("mcr.microsoft.com/windows/nanoserver:ltsc2022", "mcr.microsoft.com/windows/nanoserver:ltsc2022",
     "mcr.microsoft.com/windows/nanoserver"),
])
def test_parse_image(image: str, canonical: str, familiar: str) -> None:
    ref = parse_image(image)
    assert str(ref) == canonical
    assert ref.familiar == familiar


@pytest.mark.parametrize("image, why", [
    ("", "invalid reference format"),
    ("Nginx", "repository name must be lowercase"),
    ("nginx:", "invalid reference format"),
    ("nginx:bad tag", "invalid reference format"),
    ("nginx@sha256:abc", "invalid reference format"),
    ("a" * 64, "cannot specify 64-byte hexadecimal strings"),
    ("-nginx", "invalid reference format"),
])
def test_parse_image_rejects(image: str, why: str) -> None:
    with pytest.raises(InvalidImageName, match=why):
        parse_image(image)


@pytest.mark.parametrize("image, app, oses", [
    (AGNHOST, "agnhost", {"linux", "windows"}),
    ("k8s.gcr.io/e2e-test-images/agnhost:2.39", "agnhost", {"linux", "windows"}),
    ("nginx:1.25", "nginx", {"linux"}),
    ("mcr.microsoft.com/oss/nginx/nginx:1.15.5-alpine", "nginx", {"linux"}),
    ("hashicorp/http-echo", "http-echo", {"linux"}),
    ("busybox", "client", {"linux"}),
    ("curlimages/curl:8.5.0", "client", {"linux"}),
    ("curl", "client", {"linux"}),
    ("registry.k8s.io/coredns/coredns:v1.10.1", "coredns", {"linux"}),
    ("coredns/coredns:1.10.1", "coredns", {"linux"}),
    ("registry.k8s.io/pause:3.9", "pause", {"linux", "windows"}),
    ("mcr.microsoft.com/windows/servercore/iis", "iis", {"windows"}),
    ("mcr.microsoft.com/windows/servercore:ltsc2022", "client", {"windows"}),
    ("mcr.microsoft.com/windows/nanoserver:ltsc2022", "client", {"windows"}),
])
def test_table_lookup(image: str, app: str, oses: set[str]) -> None:
    known = lookup(parse_image(image))
    assert known is not None
    assert known.app == app and set(known.oses) == oses


def test_unknown_images_are_not_in_the_table() -> None:
    assert lookup(parse_image("foo/bar:1")) is None
    assert lookup(parse_image("nginxinc/nginx-unprivileged")) is None
    assert lookup(parse_image("mcr.microsoft.com/dotnet/samples")) is None
    # every table repository is a normalized one (so that lookups can find it)
    for img in KNOWN_IMAGES:
        for repo in img.repositories:
            name = repo.replace("/*", "/anything")
            assert parse_image(name).repository == name
            assert lookup(parse_image(name)) is img


def container(image: str, **extra: Any) -> dict[str, Any]:
    return {"name": "c", "image": image, **extra}


def plan(image: str, node_os: str = "linux", **extra: Any) -> ContainerPlan:
    result = plan_container(container(image, **extra), node_os)
    assert isinstance(result, ContainerPlan), result
    return result


@pytest.mark.parametrize("spec, app, listens, options", [
    ({"args": ["netexec"]}, "agnhost-netexec", ["8080/TCP", "8081/UDP"], {"http_port": 8080, "udp_port": 8081}),
    ({"args": ["netexec", "--http-port=80", "--udp-port=90"]}, "agnhost-netexec", ["80/TCP", "90/UDP"],
     {"http_port": 80, "udp_port": 90}),
    ({"args": ["netexec", "--http-port", "8000", "--udp-port", "-1"]}, "agnhost-netexec", ["8000/TCP"],
     {"http_port": 8000, "udp_port": -1}),
    ({"command": ["/agnhost", "netexec", "--http-port=9000"]}, "agnhost-netexec", ["9000/TCP", "8081/UDP"], None),
    ({"args": ["serve-hostname"]}, "agnhost-serve-hostname", ["9376/TCP"], None),
    ({"args": ["serve-hostname", "--udp", "--http=false", "--port", "5000"]}, "agnhost-serve-hostname",
     ["5000/UDP"], None),
    ({"args": ["serve-hostname", "--tcp", "--udp", "--http=false"]}, "agnhost-serve-hostname",
     ["9376/TCP", "9376/UDP"], None),
    ({}, "pause", [], None),                      # CMD ["pause"]
    ({"args": ["pause"]}, "pause", [], None),
])
def test_agnhost_subcommands(spec: dict[str, Any], app: str, listens: list[str], options: dict[str, Any] | None) -> None:
    for node_os in ("linux", "windows"):
        p = plan(AGNHOST, node_os, **spec)
        assert p.app == app and p.os == node_os
        assert [str(x) for x in p.listens] == listens
        assert p.lifetime is None and not p.events
        if options is not None:
            assert dict(p.options) == options


def test_agnhost_exits_and_unemulated_subcommands() -> None:
    p = plan(AGNHOST, args=["serve-hostname", "--udp"])  # --http defaults to true: log.Fatalf
    assert (p.lifetime, p.exit_code) == (0.0, 1) and "at the same time" in p.exit_message
    p = plan(AGNHOST, args=["no-such-thing"])
    assert p.exit_code == 1 and p.exit_message == 'Error: unknown command "no-such-thing" for "agnhost"'
    p = plan(AGNHOST, args=["netexec", "--http-port=x"])
    assert p.exit_code == 1 and 'invalid argument "x" for "--http-port"' in p.exit_message
    p = plan(AGNHOST, args=["liveness"], ports=[{"containerPort": 8080}])
    assert p.app == "generic" and [str(x) for x in p.listens] == ["8080/TCP"]
    assert p.events[0].reason == "EmulatedImage"
    assert p.events[0].message == ('agnhost subcommand "liveness" is not emulated by hcinet: '
                                   "serving a generic responder on ports 8080/TCP")
    p = plan(AGNHOST, command=["sh", "-c", "sleep 5"])
    assert p.app == "client" and p.lifetime == 5.0


@pytest.mark.parametrize("image, spec, app, listens, options", [
    ("nginx", {}, "nginx", ["80/TCP"], {"port": 80}),
    ("nginx:1.25", {"ports": [{"containerPort": 80}]}, "nginx", ["80/TCP"], {"port": 80}),
    ("hashicorp/http-echo:1.0", {"args": ["-text=hello"]}, "http-echo", ["5678/TCP"],
     {"text": "hello", "host": "0.0.0.0", "port": 5678}),
    ("hashicorp/http-echo", {"args": ["-listen=:8080", "-text", "two words"]}, "http-echo", ["8080/TCP"],
     {"text": "two words", "host": "0.0.0.0", "port": 8080}),
    ("hashicorp/http-echo", {"args": ["--listen=127.0.0.1:9000"], "env": [{"name": "ECHO_TEXT", "value": "env"}]},
     "http-echo", ["9000/TCP"], {"text": "env", "host": "127.0.0.1", "port": 9000}),
    ("registry.k8s.io/coredns/coredns:v1.10.1", {"args": ["-conf", "/etc/coredns/Corefile"]}, "coredns",
     ["53/UDP", "53/TCP", "9153/TCP", "8080/TCP", "8181/TCP"], {"conf": "/etc/coredns/Corefile"}),
])
def test_server_images(image: str, spec: dict[str, Any], app: str, listens: list[str], options: dict[str, Any]) -> None:
    p = plan(image, **spec)
    assert p.app == app and [str(x) for x in p.listens] == listens and dict(p.options) == options
    assert p.role == ("coredns" if app == "coredns" else "server")


def test_iis_on_windows() -> None:
    p = plan("mcr.microsoft.com/windows/servercore/iis:windowsservercore-ltsc2022", "windows")
    assert p.app == "iis" and [str(x) for x in p.listens] == ["80/TCP"]


@pytest.mark.parametrize("image, node_os, spec, lifetime, code", [
    ("busybox", "linux", {}, 0.0, 0),                                  # sh without a terminal
    ("busybox:1.36", "linux", {"args": ["sleep", "3600"]}, 3600.0, 0),
    ("busybox", "linux", {"command": ["sh", "-c", "sleep 1h"]}, 3600.0, 0),
    ("busybox", "linux", {"command": ["sleep", "infinity"]}, None, 0),
    ("busybox", "linux", {"command": ["sh", "-c", "while true; do sleep 1; done"]}, None, 0),
    ("busybox", "linux", {"command": ["sleep", "soon"]}, 0.0, 1),
    ("curlimages/curl", "linux", {}, 0.0, 2),                           # curl with no URL
    ("curlimages/curl", "linux", {"command": ["sleep", "30"]}, 30.0, 0),
    ("curlimages/curl", "linux", {"args": ["sleep", "30"]}, 30.0, 0),   # through /entrypoint.sh
    ("mcr.microsoft.com/windows/nanoserver:ltsc2022", "windows", {}, 0.0, 0),   # cmd.exe
    ("mcr.microsoft.com/windows/nanoserver:ltsc2022", "windows", {"command": ["ping", "-t", "localhost"]}, None, 0),
    ("registry.k8s.io/pause:3.9", "windows", {}, None, 0),
])
def test_client_images(image: str, node_os: str, spec: dict[str, Any], lifetime: float | None, code: int) -> None:
    p = plan(image, node_os, **spec)
    assert p.role == "client" and not p.listens
    assert (p.lifetime, p.exit_code) == (lifetime, code)


def test_http_echo_without_text_exits_127() -> None:
    p = plan("hashicorp/http-echo")
    assert (p.lifetime, p.exit_code, p.exit_message) == (0.0, 127, "Missing -text option OR ENV var TEXT is empty!")


@pytest.mark.parametrize("ports, message", [
    ([{"containerPort": 8080}],
     'image "foo/bar:1" is not known to hcinet: serving a generic responder on ports 8080/TCP'),
    ([{"containerPort": 8080, "name": "http"}, {"containerPort": 53, "protocol": "UDP"},
      {"containerPort": 9000, "protocol": "SCTP"}],
     'image "foo/bar:1" is not known to hcinet: serving a generic responder on ports 8080/TCP, 53/UDP'),
    ([], 'image "foo/bar:1" is not known to hcinet: it declares no TCP or UDP containerPort, so nothing is served'),
])
def test_unknown_image_gets_generic_responder_and_event(ports: list[dict[str, Any]], message: str) -> None:
    p = plan("foo/bar:1", ports=ports)
    assert p.app == "generic" and p.os == "linux"
    assert [(e.type, e.reason, e.message) for e in p.events] == [("Normal", "EmulatedImage", message)]
    assert all(x.protocol in ("TCP", "UDP") for x in p.listens)
    if ports and ports[0].get("name"):
        assert p.port_names == {"http": 8080}


@pytest.mark.parametrize("image, node_os, canonical", [
    ("nginx", "windows", "docker.io/library/nginx:latest"),
    ("busybox:1.36", "windows", "docker.io/library/busybox:1.36"),
    ("hashicorp/http-echo:1.0", "windows", "docker.io/hashicorp/http-echo:1.0"),
    ("foo/bar:1", "windows", "docker.io/foo/bar:1"),   # unknown images count as Linux
    ("mcr.microsoft.com/windows/servercore/iis", "linux", "mcr.microsoft.com/windows/servercore/iis:latest"),
    ("mcr.microsoft.com/windows/nanoserver:ltsc2022", "linux", "mcr.microsoft.com/windows/nanoserver:ltsc2022"),
])
def test_os_mismatch_fails_to_pull(image: str, node_os: str, canonical: str) -> None:
    err = plan_container(container(image), node_os)
    assert isinstance(err, ImageError)
    detail = (f'rpc error: code = NotFound desc = failed to pull and unpack image "{canonical}": '
              f"no matching manifest for {node_os}/amd64 in the manifest list entries")
    assert err.waiting(1) == ("ErrImagePull", detail)
    assert err.waiting(2) == ("ImagePullBackOff", f'Back-off pulling image "{image}"')
    assert [(e.type, e.reason, e.message) for e in err.events] == [
        ("Normal", "Pulling", f'Pulling image "{image}"'),
        ("Warning", "Failed", f'Failed to pull image "{image}": {detail}'),
        ("Warning", "Failed", "Error: ErrImagePull")]
    assert [e.reason for e in err.backoff_events] == ["BackOff", "Failed"]


def test_invalid_image_name() -> None:
    err = plan_container(container("Nginx:1"), "linux")
    assert isinstance(err, ImageError)
    message = ('Failed to apply default image tag "Nginx:1": couldn\'t parse image reference "Nginx:1": '
               "invalid reference format: repository name must be lowercase")
    assert err.waiting(1) == err.waiting(5) == ("InvalidImageName", message)
    assert [e.reason for e in err.events] == ["InspectFailed", "Failed"]


def test_resolve_pod_spec_in_order() -> None:
    spec = {"containers": [container(AGNHOST, args=["netexec"]) | {"name": "web"},
                           container("nginx") | {"name": "side"},
                           container("busybox", command=["sleep", "10"]) | {"name": "tools"}]}
    linux = resolve(spec, "linux")
    assert [(type(r).__name__, r.name) for r in linux] == [
        ("ContainerPlan", "web"), ("ContainerPlan", "side"), ("ContainerPlan", "tools")]
    windows = resolve(spec, "windows")
    assert [type(r).__name__ for r in windows] == ["ContainerPlan", "ImageError", "ImageError"]
    with pytest.raises(ValueError, match="node_os"):
        resolve(spec, "darwin")


def test_declared_ports_and_pull_backoff() -> None:
    p = plan(AGNHOST, args=["netexec"], ports=[{"containerPort": 8080, "name": "http"},
                                               {"containerPort": 8081, "protocol": "UDP", "name": "udp"}])
    assert p.ports == (ContainerPort(8080, "TCP", "http"), ContainerPort(8081, "UDP", "udp"))
    assert p.port_names == {"http": 8080, "udp": 8081}
    assert [pull_backoff(n) for n in (1, 2, 3, 5, 6, 10)] == [10, 20, 40, 160, 300, 300]
