"""A NIC that leaves a running guest while no controller watches: the next controller finds it gone.

QEMU reports the end of a detach once, as ``DEVICE_DELETED`` on the monitor connection of the moment;
with no controller connected the event is lost, and a new controller must ask QEMU which devices it
still has. A user-mode NIC needs neither a network nor a namespace, and goes the same way as a tapped
one (``netdev_del`` is what closes a tap), so it stands for both here. The tapped NIC's own attach and
detach are in ``tests/netns_scenarios.py`` (``nic_hotplug``).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from qemu.qmp import QMPClient

import avirt
from tests.guest import BASE_CMDLINE, GuestImages
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

ROOT_PORTS = "<controller type='pci' model='pcie-root-port'/>" * 2
NIC = "<interface type='user'><mac address='52:54:00:31:00:01'/><model type='virtio'/></interface>"


async def _netdevs(client: QMPClient) -> str:
    """QEMU's own list of its network backends (HMP ``info network``; QMP has no query for them)."""
    out = await client.execute("human-monitor-command", {"command-line": "info network"})
    assert isinstance(out, str)
    return out


async def test_a_nic_released_while_no_controller_watched_leaves_the_live_definition(
        xml: XMLFactory, tmp_path: Path, state_dir: Path, guest_images: GuestImages) -> None:
    serial = tmp_path / "serial.log"
    nics = state_dir / "run" / "nicgone" / "nics.json"
    async with avirt.connect(state_dir=state_dir) as conn:
        dom = await conn.define_xml(xml(
            "nicgone", type="qemu", memory_mib=256, kernel=str(guest_images.kernel),
            initrd=str(guest_images.initrd), serial_file=str(serial), extra_devices=ROOT_PORTS,
            cmdline=BASE_CMDLINE))
        await dom.start()
        await wait_for_serial(serial, "avirt-guest: ready")
        await dom.attach_device(NIC)
        assert "52:54:00:31:00:01" in await dom.xml()
        assert json.loads(nics.read_text()) == ["net0"]
    client = QMPClient()  # no controller now: the NIC is asked for behind avirt's back
    await client.connect(str(state_dir / "run" / "nicgone" / "qmp.sock"))
    assert "net0:" in await _netdevs(client)
    await client.execute("device_del", {"id": "net0"})
    with anyio.fail_after(60):  # the guest lets go through ACPI hotplug, a moment later
        while any(c["name"] == "net0"  # noqa: ASYNC110 (the event goes to this client only)
                  for c in await client.execute("qom-list", {"path": "/machine/peripheral"})):
            await anyio.sleep(0.1)
    assert "net0:" in await _netdevs(client)  # the backend stays until someone deletes it
    await client.disconnect()
    async with avirt.connect(state_dir=state_dir) as conn:
        dom = await conn.lookup("nicgone")
        assert "52:54:00:31:00:01" not in await dom.xml()
        assert json.loads(nics.read_text()) == []
        assert "net0:" not in await dom.qemu_monitor_command(
            "human-monitor-command", {"command-line": "info network"})  # the backend is closed too
        await dom.attach_device(NIC)  # the id is free again, and the guest takes the NIC back
        assert json.loads(nics.read_text()) == ["net0"]
        await dom.destroy()
