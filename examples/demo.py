"""A guided tour of avirt: define, start, watch events, snapshot and commit live, reconnect, stop.

Runs against real QEMU in a throwaway state directory and cleans up after itself. The guest needs no
operating system (q35 firmware only); its disk is a four-layer qcow2 chain with a recognisable pattern
in each layer, so every block job can be checked byte by byte. KVM is used when QEMU can use it, TCG
otherwise.

    python examples/demo.py
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import anyio

import avirt
from avirt import Event, EventKind, LifecycleEvent
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

#: (layer, pattern byte, offset in MiB): each layer writes 2 MiB, overlapping the one below.
LAYERS = (("base", 0x11, 0), ("snap1", 0x22, 1), ("snap2", 0x33, 2), ("active", 0x44, 3))
#: What the guest sees through the whole chain: (pattern, offset MiB, length MiB).
GUEST_VIEW = ((0x11, 0, 1), (0x22, 1, 1), (0x33, 2, 1), (0x44, 3, 2))


def step(text: str) -> None:
    print(f"\n== {text}")


def make_chain(directory: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    previous = None
    for name, pattern, offset in LAYERS:
        path = paths[name] = directory / f"{name}.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if previous is not None:
            argv += ["-F", "qcow2", "-b", str(previous)]
        subprocess.run([*argv, str(path), "64M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset}M 2M", str(path)],
                       check=True, capture_output=True)
        previous = path
    return paths


def verify(image: Path) -> bool:
    """Read the guest's view back through ``image`` and compare every byte with the patterns."""
    for pattern, offset, length in GUEST_VIEW:
        result = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c",
                                 f"read -P {pattern:#x} {offset}M {length}M", str(image)],
                                capture_output=True, text=True)
        if result.returncode != 0 or "verification failed" in result.stdout:
            return False
    return True


def show(event: Event) -> None:
    if isinstance(event, LifecycleEvent):
        print(f"   event #{event.seq}: {event.domain} {event.type.name} {event.detail}")
    else:
        print(f"   event #{event.seq}: {event.domain} {type(event).__name__} "
              f"{getattr(event, 'status', '')}")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="avirt-demo-") as tmp:
        state_dir = Path(tmp) / "state"
        paths = await anyio.to_thread.run_sync(make_chain, Path(tmp))

        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            conn.subscribe(show, kinds={EventKind.LIFECYCLE, EventKind.BLOCK_JOB})
            caps = await conn.capabilities()
            kind = "kvm" if caps["kvm"] else "qemu"
            step(f"QEMU {caps['qemu_version']}, KVM usable: {caps['kvm']} -> <domain type='{kind}'>")

            dom = await conn.define_xml(XML.format(type=kind, disk=paths["active"]))
            started = time.perf_counter()
            await dom.start()
            step(f"started in {(time.perf_counter() - started) * 1000:.0f} ms: {await dom.state()}")
            try:
                await dom.start()
            except OperationInvalidError as e:
                step(f"starting it twice is refused at once: {e}")
            await dom.suspend()
            await dom.resume()
            step(f"suspended and resumed: {await dom.state()}")

            step("the disk's chain, as block_chain() reads it from the images")
            for index, image in enumerate(await dom.block_chain("vda")):
                print(f"   vda[{index}] {Path(image.path).name:28} {image.allocated >> 20} MiB of its own")

            overlays = await dom.snapshot_disks("before-upgrade")
            step(f"live disk snapshot: vda now writes to {Path(overlays['vda']).name}")

            job = await dom.block_commit("vda", top="vda[2]", shallow=True)
            step(f"intermediate commit of snap2 into snap1: {await job}")

            job = await dom.block_commit("vda", pivot=True)
            async for cur, end in job.progress():  # the last sample is where the job ended
                if end:  # (0, 0): QEMU has not counted the work to do yet
                    print(f"   active commit: {cur >> 10} of {end >> 10} KiB")
            step(f"active commit of everything into base, pivoted: {await job}")
            chain = [Path(image.path).name for image in await dom.block_chain("vda")]
            step(f"chain now {chain}; every byte still there: {verify(paths['base'])}")

        step("the controller is gone; the guest is not. A new controller reconnects:")
        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            conn.subscribe(show, kinds={EventKind.LIFECYCLE})
            dom = await conn.lookup("demo")
            print(f"   {dom.name}: {await dom.state()}")
            await dom.destroy()
            await dom.undefine()
            step(f"destroyed and undefined; domains left: {[d.name for d in await conn.list_domains()]}")
    print("\ndemo finished")


if __name__ == "__main__":
    anyio.run(main)
