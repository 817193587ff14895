"""A short guided tour of avirt: define, start, pause, inspect, reconnect, stop.

Runs against real QEMU in a throwaway state directory and cleans up after itself. The guest needs no
operating system (q35 firmware only) and gets a disk with a three-layer qcow2 backing chain, so the live
XML has something to show. KVM is used when QEMU can use it, TCG otherwise.

    python examples/demo.py
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import anyio

import avirt
from avirt.errors import OperationInvalidError

XML = """<domain type='{type}'>
  <name>demo</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


def step(text: str) -> None:
    print(f"\n== {text}")


def make_chain(directory: Path) -> Path:
    """base.qcow2 <- snap1.qcow2 <- active.qcow2, made with qemu-img."""
    previous = None
    for name in ("base", "snap1", "active"):
        path = directory / f"{name}.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if previous is not None:
            argv += ["-F", "qcow2", "-b", str(previous)]
        subprocess.run([*argv, str(path), "64M"], check=True)
        previous = path
    assert previous is not None
    return previous


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="avirt-demo-") as tmp:
        state_dir = Path(tmp) / "state"
        disk = await anyio.to_thread.run_sync(make_chain, Path(tmp))

        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            caps = await conn.capabilities()
            kind = "kvm" if caps["kvm"] else "qemu"
            step(f"QEMU {caps['qemu_version']}, KVM usable: {caps['kvm']} -> <domain type='{kind}'>")

            dom = await conn.define_xml(XML.format(type=kind, disk=disk))
            step(f"defined {dom.name} ({dom.uuid}): {await dom.state()}")

            started = time.perf_counter()
            await dom.start()
            took = (time.perf_counter() - started) * 1000
            step(f"started in {took:.0f} ms: {await dom.state()}")

            try:
                await dom.start()
            except OperationInvalidError as e:
                step(f"starting it twice is refused at once: {e}")

            await dom.suspend()
            step(f"suspended: {await dom.state()}")
            await dom.resume()
            step(f"resumed: {await dom.state()}")

            step("live XML: the disk's backing chain, read from the images")
            live = await dom.xml()
            start = live.index("<disk")
            print(live[start : live.index("</disk>") + len("</disk>")])

        step("the controller is gone; the guest is not. A new controller reconnects:")
        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            dom = await conn.lookup("demo")
            print(f"   {dom.name}: {await dom.state()}, {await dom.info()}")
            await dom.destroy()
            step(f"destroyed: {await dom.state()}")
            await dom.undefine()
            step(f"undefined; domains left: {[d.name for d in await conn.list_domains()]}")
    print("\ndemo finished")


if __name__ == "__main__":
    anyio.run(main)
