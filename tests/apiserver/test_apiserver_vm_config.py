"""The API server VM's config: a DHCP NIC is valid (the address is leased before the services
start, so it is looked up then, not when the config is parsed)."""

from __future__ import annotations

from typing import Any

import pytest

from agents.apiserver.vm import ApiServerVM
from agents.vm.runtime import ConfigError, VMConfig


def config(nic: dict[str, Any]) -> VMConfig:
    return VMConfig.parse({"name": "c1-control-plane-0", "kind": "apiserver", "run_dir": "/tmp/x",
                           "broker": "tcp://127.0.0.1:1", "cluster": "c1", "vip": "172.16.0.150",
                           "nics": [{"name": "eth0", "network": "dc", "mac": "02:01:00:00:00:01", **nic}]})


def test_a_dhcp_nic_is_accepted_and_its_lease_is_the_api_servers_address() -> None:
    vm = ApiServerVM(config({"dhcp": True}))  # refused at parse time before: no address yet
    vm._claimed[0] = ["172.16.0.33"]  # what the runtime's DHCP client holds once it is bound
    assert vm._first_address() == "172.16.0.33"
    vm._claimed[0] = []
    with pytest.raises(ConfigError, match=r"^nics\[0\]: eth0 has no address \(static or leased\)"):
        vm._first_address()


def test_a_static_nic_is_its_address() -> None:
    vm = ApiServerVM(config({"addresses": ["172.16.0.20/24"]}))
    assert vm.node_ip == "172.16.0.20" and vm._first_address() == "172.16.0.20"
