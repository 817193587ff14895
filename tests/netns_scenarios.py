"""Network scenarios that run inside a network namespace of their own.

``tests/test_networks.py`` starts each as ``unshare --net -- python -m tests.netns_scenarios NAME DIR``:
the controller, the bridges it makes, dnsmasq, nftables tables, taps and QEMU all live in that namespace,
so nothing here can touch the host's real interfaces, and the namespace (with anything a failed run left
in it) goes away with its last process. A scenario checks with plain asserts; the exit status and the
output are the test's verdict. Every wait is on something the guest prints on its serial console or on
the host's state, against a deadline (``tests/waiting.py``); never a bare sleep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

import avirt
from avirt import Connection, Domain, EventKind, LifecycleType
from avirt.errors import NetworkNotFoundError
from tests.guest import BASE_CMDLINE, GuestImages, build_guest
from tests.waiting import wait_for_serial

NAT = """<network>
  <name>natnet</name>
  <forward mode='nat'/>
  <bridge name='avtestnat0'/>
  <mtu size='9000'/>
  <domain name='lab.test'/>
  <dns><host ip='10.77.0.50'><hostname>printer</hostname></host></dns>
  <ip address='10.77.0.1' prefix='24'>
    <dhcp>
      <range start='10.77.0.100' end='10.77.0.150'/>
      <host mac='52:54:00:77:00:11' ip='10.77.0.11'/>
      <host mac='52:54:00:77:00:12' ip='10.77.0.12'/>
    </dhcp>
  </ip>
</network>"""

ISOLATED = """<network>
  <name>isolated</name>
  <ip address='10.66.0.1' netmask='255.255.255.0'>
    <dhcp><range start='10.66.0.100' end='10.66.0.150'/></dhcp>
  </ip>
</network>"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def links() -> dict[str, dict[str, object]]:
    return {link["ifname"]: link for link in json.loads(sh("ip", "-j", "-d", "link", "show") or "[]")}


def ports(bridge: str) -> list[str]:
    return sorted(name for name, link in links().items() if link.get("master") == bridge)


def gone(pid: int) -> bool:
    """No such process, or only its zombie (whoever reaps it here is no business of avirt's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


async def avirt_cli(work: Path, *args: str) -> str:
    """``avirt --state-dir <work>/state ARGS`` in a process of its own (so a client of this controller);
    run without blocking the event loop that serves it."""
    done = await anyio.run_process([sys.executable, "-m", "avirt", "--state-dir", str(work / "state"), *args],
                                   check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout.decode()


async def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    try:
        with anyio.fail_after(timeout):
            while not check():  # noqa: ASYNC110 (host state offers nothing to wait on)
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


#: The kernel of the e1000e guest: Debian's cloud kernel has no e1000e driver.
GENERIC_KERNEL = "linux-image-amd64"


def guest_xml(name: str, images: GuestImages, serial: Path, nics: str, knobs: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{images.kernel}</kernel>
    <initrd>{images.initrd}</initrd><cmdline>{BASE_CMDLINE} {knobs}</cmdline></os>
  <features><acpi/></features>
  <devices>{nics}<serial type='file'><source path='{serial}'/></serial></devices>
</domain>"""


def nic(kind: str, source: str, mac: str, extra: str = "", model: str = "virtio") -> str:
    attr = {"network": "network", "bridge": "bridge"}.get(kind)
    src = f"<source {attr}='{source}'/>" if attr else ""
    return f"<interface type='{kind}'>{src}<mac address='{mac}'/><model type='{model}'/>{extra}</interface>"


async def nat_two_guests(conn: Connection, work: Path, images: GuestImages) -> None:
    """Two guests on a NAT network: leases (seen by dnsmasq and by the guests), pings between them and
    to the bridge, a link pulled and plugged back, and a teardown that leaves nothing behind."""
    events: list[avirt.Event] = []
    conn.subscribe(events.append, kinds={EventKind.NETWORK_LIFECYCLE})
    net = await conn.define_network_xml(NAT)
    await net.start()
    assert await net.is_active() and await net.bridge() == "avtestnat0"
    run = json.loads((work / "state/networks/natnet/run.json").read_text())
    assert not gone(run["dnsmasq"])
    assert "table inet avirt-avtestnat0" in sh("nft", "list", "ruleset")
    guests: dict[str, tuple[Domain, Path]] = {}
    for n, peer in ((11, 12), (12, 11)):
        serial = work / f"g{n}.log"
        knobs = (f"avirt.net=dhcp avirt.hostname=guest{n} avirt.ping=10.77.0.{peer},10.77.0.1 "
                 f"avirt.lookup=printer@10.77.0.1,guest{peer}.lab.test@10.77.0.1 avirt.hotnet=1")
        spare = "<controller type='pci' model='pcie-root-port'/>" * 2  # one for the NIC plugged in below
        dom = await conn.define_xml(guest_xml(f"g{n}", images, serial,
                                              nic("network", "natnet", f"52:54:00:77:00:{n}") + spare, knobs))
        await dom.start()
        guests[f"g{n}"] = (dom, serial)
    for n in (11, 12):
        serial = guests[f"g{n}"][1]
        await wait_for_serial(serial, f"avirt-guest: net eth0 mac=52:54:00:77:00:{n} ip=10.77.0.{n}/24",
                              timeout=120)
    leases = {lease.mac: lease for lease in await net.dhcp_leases()}
    first = leases["52:54:00:77:00:11"]
    assert (first.ip, first.hostname) == ("10.77.0.11", "guest11")
    assert leases["52:54:00:77:00:12"].ip == "10.77.0.12" and leases["52:54:00:77:00:12"].prefix == 24
    assert len(ports("avtestnat0")) == 2, ports("avtestnat0")
    assert {links()[tap]["mtu"] for tap in ports("avtestnat0")} == {9000}  # the network's MTU
    for n, peer in ((11, 12), (12, 11)):
        serial = guests[f"g{n}"][1]
        await wait_for_serial(serial, f"avirt-guest: ping 10.77.0.{peer} ok", timeout=60)
        await wait_for_serial(serial, "avirt-guest: ping 10.77.0.1 ok", timeout=60)
        text = serial.read_text()  # the lookups come before the pings
        assert "avirt-guest: lookup printer 10.77.0.50" in text, text
        assert f"avirt-guest: lookup guest{peer}.lab.test 10.77.0.{peer}" in text, text
    print("leases, DNS and pings: ok", flush=True)

    g11, serial11 = guests["g11"]
    live = await g11.xml()
    assert "<target dev=\"vnet" in live or "<target dev='vnet" in live, live
    await g11.set_link("52:54:00:77:00:11", False)
    await wait_for_serial(serial11, "avirt-guest: ping 10.77.0.12 fail", timeout=60)
    # Up again through the command line: a second program, a client of this controller.
    out = await avirt_cli(work, "domif-setlink", "g11", "52:54:00:77:00:11", "up")
    assert "is up" in out, out
    await wait_for_serial(serial11, "avirt-guest: ping 10.77.0.12 ok", count=2, timeout=60)
    listed = await avirt_cli(work, "domiflist", "g11")
    assert "vnet" in listed and "natnet" in listed and "52:54:00:77:00:11" in listed, listed
    leases = await avirt_cli(work, "net-dhcp-leases", "natnet")
    assert "10.77.0.11/24" in leases and "guest12" in leases, leases
    print("set_link down and up, domiflist, net-dhcp-leases: ok", flush=True)

    await nic_addresses_and_counters(work, g11)
    await nic_hotplug(conn, work, net, g11, serial11)

    taps = ports("avtestnat0")
    for dom, _serial in guests.values():
        await dom.destroy()
    await until(lambda: not any(t in links() for t in taps), "the taps to go with their QEMUs")
    await net.destroy()
    assert "avtestnat0" not in links()
    assert "avirt-avtestnat0" not in sh("nft", "list", "ruleset")
    await until(lambda: gone(run["dnsmasq"]), "dnsmasq to end", timeout=10)
    assert not (work / "state/networks/natnet/run.json").exists()
    assert not await net.is_active()
    await net.undefine()
    await until(lambda: len(events) >= 4, "the network's lifecycle events", timeout=5)
    assert [e.type for e in events] == [LifecycleType.DEFINED, LifecycleType.STARTED, LifecycleType.STOPPED,
                                        LifecycleType.UNDEFINED]
    print("teardown: ok", flush=True)


async def nic_addresses_and_counters(work: Path, dom: Domain) -> None:
    """What the host knows of a guest's NIC: its lease, its neighbour entry, its tap's counters (seen
    from the guest), through the API and through a second program's command line."""
    [tap] = [t for t in ports("avtestnat0") if links()[t]["address"] == "fe:54:00:77:00:11"]
    [by_lease] = await dom.interface_addresses()
    assert by_lease == avirt.InterfaceAddresses(tap, "52:54:00:77:00:11",
                                                (avirt.InterfaceAddress("ipv4", "10.77.0.11", 24),))
    [by_arp] = await dom.interface_addresses(source="arp")  # the guest pings the bridge: the host knows it
    assert by_arp.name == tap and avirt.InterfaceAddress("ipv4", "10.77.0.11", 0) in by_arp.addrs, by_arp
    counters = await dom.interface_stats(tap)
    # (sysfs shows the namespace it was mounted in, not this one: ip's counters are the kernel's own.)
    stats64 = json.loads(sh("ip", "-j", "-s", "link", "show", "dev", tap))[0]["stats64"]
    # The guest pings every second, so the counters only grow: ours were read before ip's.
    assert 0 < counters.tx_packets <= stats64["rx"]["packets"]  # the guest's tx is the tap's rx
    assert 0 < counters.rx_packets <= stats64["tx"]["packets"]
    assert counters.rx_bytes > 0 and counters.tx_bytes > 0
    assert (await dom.interface_stats("52:54:00:77:00:11")).tx_packets >= counters.tx_packets
    conn_stats = (await avirt_cli(work, "domstats", "--interface", "g11")).splitlines()
    assert "  net.count=1" in conn_stats and f"  net.0.name={tap}" in conn_stats, conn_stats
    out = await avirt_cli(work, "domifaddr", "g11")
    assert f"{tap}" in out and "10.77.0.11/24" in out and "ipv4" in out, out
    assert "10.77.0.11/0" in await avirt_cli(work, "domifaddr", "g11", "--source", "arp")
    stat = dict(line.split()[1:] for line in (await avirt_cli(work, "domifstat", "g11", tap)).splitlines())
    assert int(stat["rx_packets"]) >= counters.rx_packets and int(stat["tx_bytes"]) >= counters.tx_bytes
    print("interface addresses and counters: ok", flush=True)


async def nic_hotplug(conn: Connection, work: Path, net: avirt.Network, dom: Domain, serial: Path) -> None:
    """A NIC plugged into a running guest on the NAT network (its tap handed to QEMU over QMP): the guest
    sees it and gets a lease on it; unplugged, the guest sees it go and its tap is gone from the host."""
    mac = "52:54:00:77:00:21"
    xml = nic("network", "natnet", mac)
    before = set(ports("avtestnat0"))
    taps_before = {name for name in links() if name.startswith("vnet")}
    for bad, error in ((nic("network", "nosuch", mac), NetworkNotFoundError),
                       (nic("bridge", "nosuchbr", mac), NetworkNotFoundError)):
        try:
            await dom.attach_device(bad)
            raise AssertionError(f"attached {bad}")
        except error:
            pass
    assert {name for name in links() if name.startswith("vnet")} == taps_before  # nothing left behind
    assert mac not in await dom.xml()
    await dom.attach_device(xml, live=True, config=True)
    [tap] = set(ports("avtestnat0")) - before
    assert links()[tap]["address"] == "fe:54:00:77:00:21"
    assert f'<target dev="{tap}"/>' in await dom.xml() and mac in await dom.xml(inactive=True)
    await wait_for_serial(serial, f"avirt-guest: net eth1 mac={mac} ip=10.77.0.1", timeout=120)
    leases = {lease.mac: lease for lease in await net.dhcp_leases()}
    assert leases[mac].ip.startswith("10.77.0.1"), leases  # from the range, 10.77.0.100-150
    found = {a.hwaddr: a for a in await dom.interface_addresses()}
    assert found[mac].name == tap and found[mac].addrs[0].addr == leases[mac].ip
    await dom.set_link(mac, False)  # the plugged NIC is known to QEMU by its own id
    await dom.set_link(mac, True)
    [record] = await conn.all_domain_stats(["interface"], [dom])
    assert record.params["net.count"] == 2 and record.params["net.1.name"] == tap, (tap, record.params)
    out = await avirt_cli(work, "domiflist", "g11")
    assert tap in out and mac in out, out
    print("NIC attached: ok", flush=True)

    await dom.detach_device(xml, live=True, config=True, timeout=60)
    await wait_for_serial(serial, "avirt-guest: net eth1 gone", timeout=60)
    await until(lambda: tap not in links(), "the unplugged NIC's tap to go")
    assert mac not in await dom.xml() and mac not in await dom.xml(inactive=True)
    [record] = await conn.all_domain_stats(["interface"], [dom])
    assert record.params["net.count"] == 1
    # Plugged in again, under the id the first one left free, and out again through the command line.
    await dom.attach_device(xml)
    await wait_for_serial(serial, f"avirt-guest: net eth1 mac={mac}", count=2, timeout=120)
    (work / "nic.xml").write_text(xml)
    out = await avirt_cli(work, "detach-device", "g11", str(work / "nic.xml"))
    await wait_for_serial(serial, "avirt-guest: net eth1 gone", count=2, timeout=60)
    assert mac not in await dom.xml()
    print("NIC detached: ok", flush=True)


async def isolated_and_bridge(conn: Connection, work: Path, images: GuestImages) -> None:
    """A guest with an e1000e NIC on an isolated network reaches the host's bridge address (nothing is
    forwarded); a guest on a bridge the test made itself, with a second NIC of type ethernet on a named
    tap. (The e1000e guest runs Debian's generic kernel: the cloud kernel has no e1000e driver.)"""
    net = await conn.define_network_xml(ISOLATED)
    assert (await net.bridge() or "").startswith("avirbr")
    await net.start()
    bridge = await net.bridge()
    rules = sh("nft", "list", "table", "inet", f"avirt-{bridge}")
    assert f'iifname "{bridge}" reject' in rules and "masquerade" not in rules, rules
    serial = work / "iso.log"
    generic = await anyio.to_thread.run_sync(lambda: build_guest(kernel_meta=GENERIC_KERNEL))
    iso = await conn.define_xml(guest_xml("iso", generic, serial,
                                          nic("network", "isolated", "52:54:00:66:00:05", model="e1000e"),
                                          "avirt.net=dhcp avirt.ping=10.66.0.1"))
    await iso.start()
    await wait_for_serial(serial, "avirt-guest: ping 10.66.0.1 ok", timeout=120)
    assert "ip=10.66.0.1" in serial.read_text()  # a lease from the range: 10.66.0.1xx
    print("isolated: ok", flush=True)

    sh("ip", "link", "add", "testbr0", "type", "bridge")
    sh("ip", "address", "add", "10.88.0.1/24", "dev", "testbr0")
    sh("ip", "link", "set", "testbr0", "up")
    serial = work / "br.log"
    nics = nic("bridge", "testbr0", "52:54:00:88:00:05") + nic("ethernet", "", "52:54:00:88:00:06",
                                                                "<target dev='avtap7'/>")
    br = await conn.define_xml(guest_xml("br", images, serial, nics, "avirt.net=10.88.0.5/24 "
                                         "avirt.ping=10.88.0.1"))
    await br.start()
    assert "avtap7" in links() and links()["avtap7"].get("master") is None
    assert len(ports("testbr0")) == 1
    await wait_for_serial(serial, "avirt-guest: ping 10.88.0.1 ok", timeout=120)
    print("bridge and ethernet: ok", flush=True)
    await br.destroy()
    await iso.destroy()
    await until(lambda: "avtap7" not in links() and not ports("testbr0"), "the taps to go")
    assert "testbr0" in links()  # not avirt's: left alone
    await net.destroy()
    assert bridge not in links()


async def restarts(conn: Connection, work: Path, images: GuestImages) -> None:
    """dnsmasq killed is started again; a new controller adopts an active network, re-creates the bridge
    an administrator removed behind its back and puts the running guest's tap back on it; autostart."""
    state = work / "state"
    net = await conn.define_network_xml(NAT)
    await net.start()
    serial = work / "g.log"
    dom = await conn.define_xml(guest_xml("g", images, serial, nic("network", "natnet", "52:54:00:77:00:11"),
                                          "avirt.net=dhcp avirt.ping=10.77.0.1"))
    await dom.start()
    await wait_for_serial(serial, "avirt-guest: ping 10.77.0.1 ok", timeout=120)
    run = state / "networks/natnet/run.json"
    first = json.loads(run.read_text())["dnsmasq"]
    os.kill(first, 9)
    await until(lambda: json.loads(run.read_text())["dnsmasq"] not in (first, None), "dnsmasq restarted")
    second = json.loads(run.read_text())["dnsmasq"]
    assert not gone(second)
    print("dnsmasq restarted: ok", flush=True)
    await conn.close()
    sh("ip", "link", "delete", "avtestnat0")
    await wait_for_serial(serial, "avirt-guest: ping 10.77.0.1 fail", timeout=60)
    async with avirt.connect("qemu:///session", state_dir=state) as again:
        net = await again.lookup_network("natnet")
        assert await net.is_active()
        assert "avtestnat0" in links()
        assert "10.77.0.1/24" in sh("ip", "-br", "address", "show", "avtestnat0")
        assert json.loads(run.read_text())["dnsmasq"] == second  # the running one was adopted
        assert len(ports("avtestnat0")) == 1  # the guest's tap, back on the new bridge
        await wait_for_serial(serial, "avirt-guest: ping 10.77.0.1 ok", count=2, timeout=60)
        dom = await again.lookup("g")
        tap = ports("avtestnat0")[0]
        assert f'<target dev="{tap}"/>' in await dom.xml()  # its name known again, and usable
        await dom.set_link(tap, False)
        await wait_for_serial(serial, "avirt-guest: ping 10.77.0.1 fail", count=2, timeout=60)
        await dom.destroy()
        assert "natnet   active" in await avirt_cli(work, "net-list")
        assert "destroyed" in await avirt_cli(work, "net-destroy", "natnet")
        assert "avtestnat0" not in links()
        assert not await net.is_active()
        await net.set_autostart(True)
    async with avirt.connect("qemu:///session", state_dir=state) as third:
        net = await third.lookup_network("natnet")
        assert await net.is_active() and await net.autostart()  # started by the controller
        assert "avtestnat0" in links()
        await net.destroy()
    print("adopted: ok", flush=True)


ROUTED_V6 = """<network>
  <name>six</name>
  <forward mode='route'/>
  <domain name='lab.test'/>
  <dns><host ip='10.60.0.50'><hostname>printer</hostname></host></dns>
  <ip address='10.60.0.1' prefix='24'>
    <dhcp><host mac='52:54:00:60:00:01' name='a' ip='10.60.0.11'/></dhcp>
  </ip>
  <ip family='ipv6' address='fd60::1' prefix='64'>
    <dhcp><range start='fd60::100' end='fd60::1ff'/><host name='b' ip='fd60::12'/></dhcp>
  </ip>
</network>"""


async def routed_ipv6(conn: Connection, work: Path, images: GuestImages) -> None:
    """A routed network with IPv4 reservations only, an IPv6 DHCP range, a DNS domain and host: dnsmasq
    serves it on the bridge's addresses and nowhere else; the rules route both families unmasqueraded."""
    net = await conn.define_network_xml(ROUTED_V6)
    await net.start()
    bridge = await net.bridge()
    assert "fd60::1/64" in sh("ip", "-br", "address", "show", str(bridge))
    rules = sh("nft", "list", "table", "inet", f"avirt-{bridge}")
    assert "ip6 daddr fd60::/64 accept" in rules and "masquerade" not in rules, rules
    listening = sh("ss", "-lnup")
    dns = [line.split()[3] for line in listening.splitlines() if ":53 " in line]
    assert sorted(dns) == ["10.60.0.1:53", "[fd60::1]:53"], listening
    assert (work / "state/networks/six/dnsmasq.hosts").read_text() == "10.60.0.50 printer\n"
    await net.destroy()
    assert str(bridge) not in links()
    print("routed, IPv6, DNS: ok", flush=True)


SCENARIOS: dict[str, Callable[[Connection, Path, GuestImages], Awaitable[None]]] = {
    "nat_two_guests": nat_two_guests,
    "isolated_and_bridge": isolated_and_bridge,
    "restarts": restarts,
    "routed_ipv6": routed_ipv6,
}


async def main(name: str, work: Path) -> None:
    sh("ip", "link", "set", "lo", "up")
    images = build_guest()
    conn = await avirt.connect("qemu:///session", state_dir=work / "state")
    try:
        await SCENARIOS[name](conn, work, images)
    finally:
        await conn.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], Path(sys.argv[2]))
