"""The network commands of the ``avirt`` executable that change no host state (definitions, listings);
``net-start``/``net-destroy``, ``domif-setlink`` and ``net-dhcp-leases`` with leases run in
``tests/netns_scenarios.py``, inside a network namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.netns_scenarios import ISOLATED, NAT
from tests.test_cli import CLI

GUEST = """<domain type='qemu'><name>web1</name><memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><interface type='network'><source network='natnet'/><mac address='52:54:00:00:00:01'/>
  <model type='e1000e'/></interface></devices></domain>"""


def test_networks_are_defined_listed_printed_and_undefined(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "nat.xml").write_text(NAT)
    assert "Network 'natnet' defined" in cli.ok("net-define", str(tmp_path / "nat.xml"))
    assert "Network 'isolated' defined" in cli.ok("net-define", "-", input=ISOLATED)
    assert "natnet" not in cli.ok("net-list")  # active ones only
    listed = cli.ok("net-list", "--all")
    assert "natnet" in listed and "inactive" in listed and "avtestnat0" in listed and "avirbr" in listed
    assert "<forward mode=\"nat\"/>" in cli.ok("net-dumpxml", "natnet")
    assert "MAC address" in cli.ok("net-dhcp-leases", "natnet")
    assert "not active" in cli.fails("net-destroy", "natnet")
    other = NAT.replace("natnet", "n2").replace("nat0", "nat1")
    assert "overlaps" in cli.fails("net-define", "-", input=other)
    assert "/network/portgroup" in cli.fails("net-define", "-",
                                             input="<network><name>p</name><portgroup name='x'/></network>")
    assert "has been undefined" in cli.ok("net-undefine", "isolated")
    assert "no network" in cli.fails("net-dumpxml", "isolated")
    # The last command: any later one would be a controller that autostarts the network here, outside a
    # network namespace (autostart itself is tried in netns_scenarios.restarts).
    assert "marked as autostarted" in cli.ok("net-autostart", "natnet")
    assert (cli.state_dir / "networks/natnet/autostart").exists()


def test_domiflist_and_a_start_on_an_inactive_network(cli: CLI) -> None:
    cli.ok("net-define", "-", input=NAT)
    cli.ok("define", "-", input=GUEST)
    listed = cli.ok("domiflist", "web1")
    assert "network" in listed and "natnet" in listed and "e1000e" in listed and "52:54:00:00:00:01" in listed
    if os.geteuid() != 0:
        pytest.skip("the start is refused earlier without root (NetworkPermissionError)")
    error = cli.fails("start", "web1")
    assert "network 'natnet' is not active" in error, error
    assert "not running" in cli.fails("domif-setlink", "web1", "52:54:00:00:00:01", "down")
