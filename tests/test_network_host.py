"""What a network and a guest's taps become, as data, without making anything: the nftables script per
forward mode, dnsmasq's configuration, its lease file read back, and a NIC's ``-netdev`` with its tap's
descriptor. (Making them for real: tests/netns_scenarios.py, in network namespaces.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from avirt.config import parse_domain_xml
from avirt.drivers.qemu.abi import MACHINE_ALIASES, stabilise
from avirt.drivers.qemu.cmdline import build_argv
from avirt.hosts.local import LocalHost
from avirt.networks import dnsmasq, parse_network_xml
from avirt.networks.plumbing import nft_table, ruleset

pytestmark = pytest.mark.anyio


def net(body: str) -> str:
    return f"<network><name>n</name><bridge name='br9'/>{body}</network>"


V4 = "<ip address='10.9.0.1' prefix='24'><dhcp><range start='10.9.0.10' end='10.9.0.19'/></dhcp></ip>"


def test_each_forward_mode_has_its_rules_in_the_networks_own_table() -> None:
    isolated = ruleset(parse_network_xml(net(V4)))
    nat = ruleset(parse_network_xml(net("<forward mode='nat' dev='eth0'/>" + V4)))
    routed = ruleset(parse_network_xml(net("<forward mode='route'/>" + V4)))
    assert isolated is not None and nat is not None and routed is not None
    assert nft_table("br9") == "avirt-br9" and all(r.startswith("table inet avirt-br9 {")
                                                    for r in (isolated, nat, routed))
    assert 'iifname "br9" reject' in isolated and "saddr" not in isolated
    assert 'oifname "eth0" masquerade' in nat
    assert 'iifname "br9" oifname "eth0" ip saddr 10.9.0.0/24 accept' in nat
    assert "ct state established,related" in nat
    assert "masquerade" not in routed and 'oifname "br9" ip daddr 10.9.0.0/24 accept' in routed
    assert ruleset(parse_network_xml(net("<forward mode='open'/>" + V4))) is None


def test_dnsmasq_serves_the_bridge_only_with_the_definitions_ranges_and_hosts(tmp_path: Path) -> None:
    cfg = parse_network_xml(net("<domain name='lab.test'/><ip address='10.9.0.1' prefix='24'><dhcp>"
                                "<range start='10.9.0.10' end='10.9.0.19'/>"
                                "<host mac='52:54:00:00:00:01' name='a' ip='10.9.0.5'/></dhcp></ip>"))
    lines = dnsmasq.config_text(cfg, str(tmp_path)).splitlines()
    for line in ("bind-interfaces", "interface=br9", "except-interface=lo", "no-hosts", "domain=lab.test",
                 "dhcp-range=10.9.0.10,10.9.0.19,255.255.255.0", "dhcp-host=52:54:00:00:00:01,10.9.0.5,a",
                 f"dhcp-leasefile={tmp_path}/dnsmasq.leases", f"pid-file={tmp_path}/dnsmasq.pid"):
        assert line in lines


async def test_leases_are_read_from_dnsmasqs_file(tmp_path: Path) -> None:
    (tmp_path / "dnsmasq.leases").write_text(
        "1796281251 52:54:00:77:00:12 10.77.0.12 guest12 01:52:54:00:77:00:12\n"
        "0 52:54:00:77:00:13 10.77.0.13 * *\n"
        "duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01\n"
        "1796281300 1234 fd00::12 b 00:01:00:01:2c\n")
    first, forever, v6 = await dnsmasq.read_leases(LocalHost(), str(tmp_path))
    assert (first.mac, first.ip, first.hostname) == ("52:54:00:77:00:12", "10.77.0.12", "guest12")
    assert first.expires == 1796281251
    assert (forever.hostname, forever.client_id, forever.expires) == (None, None, 0)
    assert (v6.family, v6.ip, v6.hostname) == ("ipv6", "fd00::12", "b")
    assert await dnsmasq.read_leases(LocalHost(), str(tmp_path / "none")) == []


def test_a_tapped_nic_gets_its_descriptor_and_a_user_one_stays_user_mode() -> None:
    cfg = stabilise(parse_domain_xml(
        "<domain type='qemu'><name>p</name><memory unit='MiB'>64</memory><os><type machine='q35'>hvm</type>"
        "</os><devices><interface type='user'/><interface type='network'><source network='lab'/>"
        "<mac address='52:54:00:00:00:02'/><model type='e1000e'/><mtu size='9000'/></interface>"
        "<interface type='ethernet'><target dev='tap7'/></interface></devices></domain>"), MACHINE_ALIASES)
    argv = build_argv(cfg, chains={}, accel="tcg", monitor="fd=3", pidfile="/r/pid", run_dir="/r",
                      tap_fds={1: 11, 2: 12})
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == ["user,id=net0", "tap,id=net1,fd=11", "tap,id=net2,fd=12"]
    with pytest.raises(ValueError, match="no tap descriptor"):
        build_argv(cfg, chains={}, accel="tcg", monitor="fd=3", pidfile="/r/pid", run_dir="/r")
