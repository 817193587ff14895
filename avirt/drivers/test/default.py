"""The world a fresh ``test:///default`` connection starts with: one running domain named ``test``.

As in libvirt's test driver, ``test`` is persistent and already running. Its disk ``vda`` sits on a
four-layer qcow2 chain (1 GiB virtual, 256 MiB of guest data per layer, each layer overlapping the one
below by half), so every form of block commit and pull can be tried on it at once::

    vda[3] test-base.qcow2   0x11 @   0-256 MiB
    vda[2] test-snap1.qcow2  0x22 @ 128-384 MiB
    vda[1] test-snap2.qcow2  0x33 @ 256-512 MiB
    vda[0] test.qcow2        0x44 @ 384-640 MiB   (the active image)
"""

from __future__ import annotations

from avirt.drivers.test.images import ImageStore, MiB

NAME = "test"
UUID = "0b6e5a2c-3f7d-4e19-a8c4-5d2f7e9b1a60"
IMAGES = "/var/lib/avirt/images"

#: (file name, pattern, offset MiB, length MiB), bottom first.
LAYERS = (("test-base.qcow2", 0x11, 0, 256), ("test-snap1.qcow2", 0x22, 128, 256),
          ("test-snap2.qcow2", 0x33, 256, 256), ("test.qcow2", 0x44, 384, 256))

XML = f"""<domain type='kvm'>
  <name>{NAME}</name>
  <uuid>{UUID}</uuid>
  <title>The test driver's own domain</title>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{IMAGES}/test.qcow2'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/><source file='{IMAGES}/test-snap2.qcow2'/>
        <backingStore type='file' index='2'>
          <format type='qcow2'/><source file='{IMAGES}/test-snap1.qcow2'/>
          <backingStore type='file' index='3'>
            <format type='qcow2'/><source file='{IMAGES}/test-base.qcow2'/>
            <backingStore/>
          </backingStore>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='52:54:00:7e:57:01'/><model type='virtio'/></interface>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def fill_images(store: ImageStore) -> None:
    """Give the ``test`` domain's layers their data (the XML made them, empty)."""
    for name, pattern, offset, length in LAYERS:
        image = store.get(f"{IMAGES}/{name}")
        assert image is not None, "the test domain is defined before its images are filled"
        image.fill(pattern, offset * MiB, length * MiB)
