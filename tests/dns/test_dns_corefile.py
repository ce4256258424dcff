"""The Corefile lexer/parser and the options the emulated CoreDNS takes from it."""

from __future__ import annotations

import pytest

from agents.dns.corefile import KUBEADM_COREFILE, CorefileError, CorefileOptions, parse_corefile

AKS_LIKE = """
.:53 {
    errors
    ready
    health
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import custom/*.override
}
import custom/*.server
"""


def test_kubeadm_corefile_blocks_and_directives() -> None:
    (block,) = parse_corefile(KUBEADM_COREFILE)
    assert block.keys == (".:53",)
    kube = block.get("kubernetes")
    assert kube is not None and kube.args == ("cluster.local", "in-addr.arpa", "ip6.arpa")
    assert kube.block == (("pods", "insecure"), ("fallthrough", "in-addr.arpa", "ip6.arpa"), ("ttl", "30"))
    fwd = block.get("forward")
    assert fwd is not None and fwd.args == (".", "/etc/resolv.conf") and fwd.block == (("max_concurrent", "1000"),)
    health = block.get("health")
    assert health is not None and health.block == (("lameduck", "5s"),)


def test_defaults_of_the_kubernetes_plugin_when_unset() -> None:
    opts = CorefileOptions.from_text(AKS_LIKE)
    assert (opts.pods, opts.ttl, opts.loadbalance, opts.health, opts.ready) == ("insecure", 5, True, ":8080", ":8181")
    bare = CorefileOptions.from_text(". {\n kubernetes\n forward . 10.0.0.2:53 dns://10.0.0.3 [fd00::1]:53\n}\n")
    assert (bare.domain, bare.pods, bare.ttl, bare.reverse, bare.loadbalance) == ("cluster.local", "disabled", 5,
                                                                                   False, False)
    assert bare.forward == ("10.0.0.2", "10.0.0.3", "fd00::1")


@pytest.mark.parametrize("text, picked", [
    ("cluster.local:53 {\n kubernetes cluster.local\n}\n.:53 {\n forward . 1.1.1.1\n}\n", ("1.1.1.1",)),
    ("# only a comment line\n.:53 { # trailing\n forward . 8.8.8.8 # why\n}", ("8.8.8.8",)),
    ('.:53 {\n forward . "9.9.9.9"\n}', ("9.9.9.9",)),
])
def test_the_root_zone_block_on_53_is_used(text: str, picked: tuple[str, ...]) -> None:
    assert CorefileOptions.from_text(text).forward == picked


@pytest.mark.parametrize("text, message", [
    (".:53 {\n errors\n", "missing '}'"),
    (".:53 {\n kubernetes cluster.local {\n pods sometimes\n }\n}", "wrong value for pods: sometimes"),
    (".:53 {\n kubernetes cluster.local {\n ttl 3601\n }\n}", "ttl must be in range [0, 3600]: 3601"),
    (".:53 {\n kubernetes cluster.local {\n ttl soon\n }\n}", "invalid integer"),
    ("}\n", "no matching opening brace"),
    ("example.org:53 {\n errors\n}", "no server block for the root zone on port 53"),
    (".:53 {\n forward .\n}", "after 'forward'"),
    ('.:53 {\n forward . "1.1.1.1\n}', "unterminated quoted string"),
])
def test_corefiles_coredns_refuses(text: str, message: str) -> None:
    with pytest.raises(CorefileError) as e:
        CorefileOptions.from_text(text)
    assert message in str(e.value)


def test_other_port_is_another_server() -> None:
    text = ".:5353 {\n forward . 1.1.1.1\n}\n.:53 {\n forward . 2.2.2.2\n}\n"
    assert CorefileOptions.from_text(text, port=5353).forward == ("1.1.1.1",)
    assert CorefileOptions.from_text(text).forward == ("2.2.2.2",)
