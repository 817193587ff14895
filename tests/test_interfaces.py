"""What the host knows of a guest's NICs: addresses (leases, neighbour table) and traffic counters.

The reading of the host's tables is checked here against this host's own ``/proc/net/dev`` and against
tables written out; the test driver's plausible NICs are checked through the API and the command line.
Real taps, leases and neighbour entries of running guests are checked in ``tests/netns_scenarios.py``
(``nat_two_guests``), inside a network namespace of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import avirt
from avirt import DomainState, InterfaceAddress, InterfaceAddresses, InterfaceStats
from avirt.config.devices import Interface
from avirt.connection import Connection
from avirt.errors import AgentUnavailableError, InvalidArgumentError, OperationInvalidError, UnsupportedError
from avirt.hosts.local import LocalHost
from avirt.networks import nicinfo
from avirt.networks.model import DHCPLease
from tests.test_cli import CLI

pytestmark = pytest.mark.anyio


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    async with avirt.connect("test:///default") as connection:
        yield connection


async def test_counters_are_this_hosts_and_swapped_for_the_guest() -> None:
    counters = await nicinfo.tap_counters(LocalHost())
    assert "lo" in counters and len(counters["lo"]) == 16
    host_side = list(range(1, 17))  # receive: 1..8, transmit: 9..16
    seen = nicinfo.guest_counters(host_side)
    assert seen == InterfaceStats(rx_bytes=9, rx_packets=10, rx_errs=11, rx_drop=12,
                                  tx_bytes=1, tx_packets=2, tx_errs=3, tx_drop=4)


def test_addresses_are_matched_by_mac_on_the_nics_bridge() -> None:
    nics = [Interface(type="network", mac="52:54:00:00:00:01", source_network="lab", target_dev="vnet0"),
            Interface(type="bridge", mac="52:54:00:00:00:02", source_bridge="br9", target_dev="vnet1"),
            Interface(type="ethernet", mac="52:54:00:00:00:03", target_dev="tap3"),
            Interface(type="user", mac="52:54:00:00:00:04")]
    leases = {"lab": [DHCPLease("52:54:00:00:00:01", "10.1.0.5", "a", 0, prefix=24),
                      DHCPLease("52:54:00:00:00:09", "10.1.0.9", "b", 0, prefix=24)]}
    assert nicinfo.by_lease(nics, leases) == [
        InterfaceAddresses("vnet0", "52:54:00:00:00:01", (InterfaceAddress("ipv4", "10.1.0.5", 24),))]
    table: list[dict[str, object]] = [
        {"dst": "10.1.0.5", "dev": "labbr", "lladdr": "52:54:00:00:00:01", "state": ["REACHABLE"]},
        {"dst": "fe80::1", "dev": "labbr", "lladdr": "52:54:00:00:00:01", "state": ["STALE"]},
        {"dst": "10.1.0.6", "dev": "other", "lladdr": "52:54:00:00:00:01", "state": ["STALE"]},
        {"dst": "10.9.0.2", "dev": "br9", "lladdr": "52:54:00:00:00:02", "state": ["DELAY"]},
        {"dst": "10.9.0.3", "dev": "br9", "state": ["FAILED"]},
        {"dst": "10.3.0.3", "dev": "tap3", "lladdr": "52:54:00:00:00:03", "state": ["REACHABLE"]},
    ]
    found = nicinfo.by_neighbours(nics, table, {"lab": "labbr"})
    assert found == [
        InterfaceAddresses("vnet0", "52:54:00:00:00:01", (InterfaceAddress("ipv4", "10.1.0.5", 0),
                                                          InterfaceAddress("ipv6", "fe80::1", 0))),
        InterfaceAddresses("vnet1", "52:54:00:00:00:02", (InterfaceAddress("ipv4", "10.9.0.2", 0),)),
        InterfaceAddresses("tap3", "52:54:00:00:00:03", (InterfaceAddress("ipv4", "10.3.0.3", 0),)),
    ]


async def test_the_test_drivers_nics_have_addresses_and_growing_counters(conn: Connection) -> None:
    dom = await conn.lookup("test")
    [nic] = await dom.interface_addresses()
    assert nic.hwaddr == "52:54:00:7e:57:01" and nic.name.startswith("vnet")
    assert nic.addrs == (InterfaceAddress("ipv4", "192.168.122.100", 24),)
    assert (await dom.interface_addresses(source="arp"))[0].addrs[0].prefix == 0
    assert f'<target dev="{nic.name}"/>' in await dom.xml()
    first = await dom.interface_stats(nic.name)
    await anyio.sleep(0.6)  # simulated traffic follows the clock: let some pass
    by_mac = await dom.interface_stats("52:54:00:7E:57:01")
    assert by_mac.rx_bytes > first.rx_bytes and by_mac.tx_bytes > first.tx_bytes
    assert by_mac.rx_errs == by_mac.tx_drop == 0
    [record] = await conn.all_domain_stats(["interface"], [dom])
    assert record.params["net.count"] == 1 and record.params["net.0.name"] == nic.name
    assert set(record.params) == {"net.count", "net.0.name", *(f"net.0.{d}.{c}" for d in ("rx", "tx")
                                                             for c in ("bytes", "pkts", "errs", "drop"))}


async def test_bad_interface_calls_are_refused_clearly(conn: Connection) -> None:
    dom = await conn.lookup("test")
    with pytest.raises(InvalidArgumentError, match="lease, arp, agent"):
        await dom.interface_addresses(source="dhcp")
    with pytest.raises(AgentUnavailableError):  # the test domain has no agent channel
        await dom.interface_addresses(source="agent")
    with pytest.raises(InvalidArgumentError, match="no interface with MAC or device 'vnet99'"):
        await dom.interface_stats("vnet99")
    with pytest.raises(InvalidArgumentError, match="unknown statistics group"):
        await conn.all_domain_stats(["net"])
    await dom.destroy()
    assert (await dom.state())[0] is DomainState.SHUTOFF
    with pytest.raises(OperationInvalidError, match="not running"):
        await dom.interface_addresses()
    with pytest.raises(OperationInvalidError, match="not running"):
        await dom.interface_stats("vnet0")


def test_domifaddr_domifstat_and_domstats_interface(cli: CLI) -> None:
    out = cli.ok("-c", "test:///default", "domifaddr", "test").splitlines()
    assert out[0].split() == ["Name", "MAC", "address", "Protocol", "Address"]
    assert out[2].split() == ["vnet0", "52:54:00:7e:57:01", "ipv4", "192.168.122.100/24"]
    arp = cli.ok("-c", "test:///default", "domifaddr", "test", "--source", "arp")
    assert "192.168.122.100/0" in arp
    stat = cli.ok("-c", "test:///default", "domifstat", "test", "vnet0").splitlines()
    assert [line.split()[:2] for line in stat] == [["vnet0", name] for name in (
        "rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", "tx_packets", "tx_errs", "tx_drop")]
    stats = cli.ok("-c", "test:///default", "domstats", "--interface", "test")
    assert "  net.count=1" in stats and "  net.0.name=vnet0" in stats and "state.state" not in stats
    assert "no interface with MAC or device 'vnet7'" in cli.fails("-c", "test:///default", "domifstat",
                                                                  "test", "vnet7")


SPARE = """<domain type='qemu'><name>spare</name><memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><controller type='pci' model='pcie-root-port'/></devices></domain>"""
NIC = "<interface type='network'><source network='lab'/><mac address='52:54:00:aa:00:01'/></interface>"


async def test_nics_plugged_in_and_out_of_the_test_driver(conn: Connection) -> None:
    test = await conn.lookup("test")
    with pytest.raises(OperationInvalidError, match="needs <controller type='pci' index='3'"):
        await test.attach_device(NIC)  # no spare root port: the running domain cannot take the NIC
    await test.attach_device(NIC.replace("<mac address='52:54:00:aa:00:01'/>", ""), live=False, config=True)
    [added] = [line for line in (await test.xml(inactive=True)).splitlines() if "mac address" in line][1:]
    assert "52:54:00:" in added  # a MAC was given

    dom = await conn.define_xml(SPARE)
    await dom.start()
    with pytest.raises(UnsupportedError, match="direct"):
        await dom.attach_device("<interface type='direct'><source dev='eth0'/></interface>")
    removed = []
    conn.subscribe(removed.append, kinds={avirt.EventKind.DEVICE_REMOVED})
    await dom.attach_device(NIC)
    assert "52:54:00:aa:00:01" in await dom.xml() and "52:54:00:aa:00:01" not in await dom.xml(inactive=True)
    with pytest.raises(OperationInvalidError, match="already has an interface with MAC 52:54:00:aa:00:01"):
        await dom.attach_device(NIC)
    [nic] = await dom.interface_addresses()
    assert nic.hwaddr == "52:54:00:aa:00:01"
    assert (await dom.interface_stats("52:54:00:aa:00:01")).rx_errs == 0
    with pytest.raises(OperationInvalidError, match="no interface with MAC 52:54:00:aa:00:02"):
        await dom.detach_device(NIC.replace("aa:00:01", "aa:00:02"))
    await dom.detach_device(f"<interface type='network'><target dev='{nic.name}'/></interface>")
    assert await dom.interface_addresses() == []
    with anyio.fail_after(5):
        while not removed:  # noqa: ASYNC110 (the callback's consumer task delivers it)
            await anyio.sleep(0.01)
    assert removed[0].alias == "net0"
