"""Virtual networks through the public API.

Definitions (define, look up, list, XML, autostart, conflicts) change no host state and run here, also
through a second program's connection (the served protocol). Everything that makes bridges, taps, rules
and dnsmasq runs in ``tests/netns_scenarios.py``, each scenario in a network namespace of its own made
with ``unshare --net``: the host's interfaces are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import avirt
from avirt.errors import (
    DomainStartError,
    NetworkConflictError,
    NetworkExistsError,
    NetworkNotFoundError,
    OperationInvalidError,
    UnsupportedError,
)
from tests.guest import GuestImages, build_guest
from tests.netns_scenarios import GENERIC_KERNEL, ISOLATED, NAT
from tests.sshd import SSHServer

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent


def _namespaces_usable() -> str | None:
    if os.geteuid() != 0:
        return "networks need root (bridges, taps, nftables)"
    for tool in ("unshare", "ip", "nft", "dnsmasq"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            return f"{tool} is not installed"
    if subprocess.run(["unshare", "--net", "--", "true"], capture_output=True).returncode != 0:
        return "cannot make a network namespace (unshare --net)"
    return None


@pytest.fixture
def netns_work(tmp_path: Path) -> Iterator[Path]:
    """A work directory for one scenario; whatever a failed one left running is killed afterwards."""
    reason = _namespaces_usable()
    if reason:
        pytest.skip(reason)
    yield tmp_path
    for pidfile in [*tmp_path.glob("state/run/*/qemu.pid"), *tmp_path.glob("state/networks/*/dnsmasq.pid")]:
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


@pytest.mark.guest
@pytest.mark.timeout(420)
@pytest.mark.parametrize("scenario", ["nat_two_guests", "isolated_and_bridge", "restarts", "routed_ipv6"])
def test_scenario_in_its_own_network_namespace(scenario: str, netns_work: Path,
                                               guest_images: GuestImages) -> None:
    # The namespace has no way out: the guests a scenario boots are built (or fetched) here first.
    if scenario == "isolated_and_bridge":
        build_guest(kernel_meta=GENERIC_KERNEL)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(["unshare", "--net", "--", sys.executable, "-m", "tests.netns_scenarios", scenario,
                           str(netns_work)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    logs = "".join(f"\n== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(netns_work.glob("*.log")))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}{logs}"


async def test_definitions_are_kept_listed_and_refused_on_conflict(state_dir: Path) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        nat = await conn.define_network_xml(NAT)
        iso = await conn.define_network_xml(ISOLATED)
        assert {n.name for n in await conn.list_networks()} == {"natnet", "isolated"}
        assert await conn.lookup_network(nat.uuid) == nat
        assert not await nat.is_active() and not await nat.autostart()
        assert await nat.dhcp_leases() == []
        bridge = await iso.bridge()
        assert bridge is not None and bridge.startswith("avirbr")
        with pytest.raises(NetworkConflictError, match="overlaps"):
            await conn.define_network_xml(NAT.replace("natnet", "other").replace("avtestnat0", "avtestnat1"))
        with pytest.raises(NetworkConflictError, match="bridge"):
            await conn.define_network_xml(f"<network><name>b</name><bridge name='{bridge}'/></network>")
        with pytest.raises(NetworkExistsError):
            await conn.define_network_xml("<network><name>natnet</name></network>")  # another uuid
        with pytest.raises(OperationInvalidError, match="not active"):
            await nat.destroy()
        await nat.set_autostart(True)
        redefined = await conn.define_network_xml(await nat.xml())  # a redefinition keeps the same network
        assert redefined == nat and await nat.autostart()
        # Off again before the next controller opens the directory: it would start the network here, in
        # the host's own namespace (autostart itself is tried in netns_scenarios.restarts).
        await nat.set_autostart(False)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as again:  # a new controller reads them
        net = await again.lookup_network("isolated")
        assert await net.bridge() == bridge
        assert "<forward" not in await net.xml()
        await net.undefine()
        with pytest.raises(NetworkNotFoundError):
            await again.lookup_network("isolated")


async def test_a_second_program_reaches_networks_through_the_controller(state_dir: Path) -> None:
    async with avirt.connect("qemu:///session", state_dir=state_dir) as holder, \
            avirt.connect("qemu:///session", state_dir=state_dir) as client:
        assert holder.serving and not client.serving
        net = await client.define_network_xml(ISOLATED)
        assert [n.name for n in await holder.list_networks()] == ["isolated"]
        assert (await client.lookup_network("isolated")).uuid == net.uuid
        assert await net.dhcp_leases() == []
        with pytest.raises(NetworkNotFoundError):
            await client.lookup_network("nope")


async def test_the_test_driver_has_no_networks() -> None:
    async with avirt.connect("test:///default") as conn:
        with pytest.raises(UnsupportedError):
            await conn.define_network_xml(ISOLATED)
        with pytest.raises(UnsupportedError):
            await conn.list_networks()


WITHOUT_NET_ADMIN = """
import sys, anyio, avirt
from avirt.errors import NetworkPermissionError
GUEST = '''<domain type='qemu'><name>g</name><memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><interface type='bridge'><source bridge='br0'/></interface></devices></domain>'''
async def main():
    async with avirt.connect("qemu:///session", state_dir=sys.argv[1]) as conn:
        net = await conn.define_network_xml("<network><name>n</name></network>")
        dom = await conn.define_xml(GUEST)
        for call in (net.start, dom.start):
            try:
                await call()
            except NetworkPermissionError as e:
                print("refused:", e)
anyio.run(main)
"""


def test_without_cap_net_admin_networks_and_tapped_guests_are_refused(state_dir: Path) -> None:
    if os.geteuid() != 0 or subprocess.run(["sh", "-c", "command -v setpriv"]).returncode != 0:
        pytest.skip("needs root and setpriv, to drop CAP_NET_ADMIN")
    done = subprocess.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable,
                           "-c", WITHOUT_NET_ADMIN, str(state_dir)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0, done.stderr
    refusals = done.stdout.splitlines()
    assert len(refusals) == 2 and all("needs root or CAP_NET_ADMIN" in r for r in refusals), done.stdout
    assert "qemu-bridge-helper" in refusals[0]


async def test_networks_are_local_only(sshd: SSHServer, state_dir: Path) -> None:
    async with avirt.connect(sshd.uri(state_dir)) as conn:
        with pytest.raises(UnsupportedError, match="local only"):
            await conn.define_network_xml(ISOLATED)
        dom = await conn.define_xml("""<domain type='qemu'><name>g</name><memory unit='MiB'>128</memory>
          <os><type arch='x86_64' machine='q35'>hvm</type></os><devices><interface type='network'>
          <source network='isolated'/></interface></devices></domain>""")
        with pytest.raises(DomainStartError, match="local host only"):
            await dom.start()
