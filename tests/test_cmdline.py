"""Every element of the XML subset reaches a QEMU that accepts it: start real guests with all of them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from avirt import DomainState
from avirt.connection import Connection

pytestmark = pytest.mark.anyio


def _images(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.qcow2" for name in ("base", "snap1", "active")}
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["base"], "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", paths["base"],
                    paths["snap1"]], check=True)
    # A relative backing name, as tools often write them: the chain must still resolve.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "snap1.qcow2",
                    paths["active"]], check=True, cwd=tmp_path)
    paths["raw"] = tmp_path / "data.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", paths["raw"], "8M"], check=True)
    return paths


KITCHEN_SINK = """<domain type='{type}'>
  <name>{name}</name>
  <title>every supported element</title>
  <description>cmdline test</description>
  <memory unit='MiB'>96</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/><boot dev='network'/></os>
  <features><acpi/><apic/></features>
  <cpu mode='host-passthrough'/>
  <clock offset='localtime'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' error_policy='stop'/><source file='{active}'/>
      <target dev='vda' bus='virtio'/>
      <serial>disk-vda</serial>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{base}'/><target dev='vdb' bus='virtio'/><readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{raw}'/><target dev='sda' bus='sata'/>
    </disk>
    <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <serial type='pty'><target port='1'/></serial>
    <console type='file'><source path='{serial}'/><target type='serial' port='0'/></console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <memballoon model='virtio'/>
    <panic model='isa'/>
  </devices>
</domain>"""


@pytest.mark.parametrize("machine", ["q35", "pc"])
async def test_kitchen_sink_domain_starts(conn: Connection, tmp_path: Path, state_dir: Path,
                                          machine: str) -> None:
    images = _images(tmp_path)
    # TCG: host-passthrough under a PVM-based KVM trips an MSR assertion in QEMU.
    xml = KITCHEN_SINK.format(type="qemu", name=f"sink-{machine}", machine=machine,
                              active=images["active"], base=images["base"], raw=images["raw"],
                              serial=tmp_path / "serial.log")
    dom = await conn.define_xml(xml)
    await dom.start()
    assert await dom.state() == (DomainState.RUNNING, "booted")

    pid = int((state_dir / f"run/sink-{machine}/qemu.pid").read_text())
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    nodes = {n["node-name"]: n for n in (json.loads(a) for a in argv if a.startswith("{\"driver\""))
             if "node-name" in n}
    # One format node per layer, numbered from the base; only the top is writable.
    assert nodes["vda-1"]["backing"] is None and nodes["vda-1"]["read-only"] is True
    assert nodes["vda-2"]["backing"] == "vda-1"
    assert nodes["vda-3"]["backing"] == "vda-2" and nodes["vda-3"]["read-only"] is False
    assert nodes["vda-2-file"]["filename"] == str(images["snap1"])
    assert nodes["sda-1"]["read-only"] is False and nodes["sda-1"]["driver"] == "raw"
    assert nodes["vdb-1"]["read-only"] is True
    # QEMU really holds the chain open: the top is write-locked.
    probe = subprocess.run(["qemu-img", "info", images["active"]], capture_output=True, text=True)
    assert "lock" in probe.stderr

    live = await dom.xml()
    assert f"<source file=\"{images['snap1']}\"/>" in live
    assert f"<source file=\"{images['base']}\"/>" in live
    assert live.index("index=\"1\"") < live.index("index=\"2\"")
    await dom.destroy()
    assert await dom.state() == (DomainState.SHUTOFF, "destroyed")
