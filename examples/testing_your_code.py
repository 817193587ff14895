"""Test your own avirt code without QEMU: give it a ``test:///default`` connection.

    python examples/testing_your_code.py              # runs the checks below, in well under a second
    python -m pytest examples/testing_your_code.py    # the same checks as pytest tests (anyio's plugin)
    AVIRT_EXAMPLE_MARK=asyncio python -m pytest examples/testing_your_code.py   # under pytest-asyncio

The code under test is :func:`flatten`, the kind of maintenance task you would write yourself: commit
every layer of a domain's disks into the base image, online with a pivot while the domain runs and with
``qemu-img`` while it is shut off. Against ``test:///default`` it runs unchanged:

* every ``avirt.connect("test:///default")`` is a fresh world, in memory, with one running domain named
  ``test`` whose disk ``vda`` has a four-layer chain; define your own domains as usual, and spell out
  a disk's backing chain with libvirt's ``<backingStore>`` elements when a test needs one;
* the API, the state rules, the errors and the events are those of the QEMU driver (a conformance
  suite runs the same tests against both); block jobs are simulated, finish in milliseconds, and
  change the chains exactly as the real ones do;
* nothing touches a file or starts a process, so tests can run in parallel and leave nothing behind.

Under pytest the tests ask for ``avirt_test_conn``, the fixture of the pytest plugin installed with
avirt: an open ``test:///default`` connection, fresh for each test and closed after it. It works under
anyio's pytest plugin (``@pytest.mark.anyio``) and under pytest-asyncio (``@pytest.mark.asyncio``);
the mark is the only difference, so this file takes it from ``AVIRT_EXAMPLE_MARK``.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from xml.etree import ElementTree

import anyio
import pytest

import avirt
from avirt import BlockJobStatus, DomainState, EventKind

# -- the code under test ------------------------------------------------------------------------------


async def flatten(dom: avirt.Domain) -> dict[str, str]:
    """Commit each disk's whole chain into its base image; returns disk -> the image it now runs on."""
    state, _ = await dom.state()
    done: dict[str, str] = {}
    for disk in await _disks(dom):
        chain = await dom.block_chain(disk)
        if len(chain) == 1:
            continue  # nothing to flatten
        # Running or paused: an active commit, pivoted onto the base once ready. Shut off: the same
        # call runs qemu-img and simply completes. Either way, awaiting the job gives its outcome.
        job = await dom.block_commit(disk, pivot=state is not DomainState.SHUTOFF)
        if await job != BlockJobStatus.COMPLETED:
            raise RuntimeError(f"{dom.name}: flattening {disk} ended {job.status}")
        done[disk] = chain[-1].path
    return done


async def _disks(dom: avirt.Domain) -> list[str]:
    root = ElementTree.fromstring(await dom.xml())
    return [target.get("dev", "") for target in root.iterfind("devices/disk/target")]


# -- its tests -----------------------------------------------------------------------------------------

#: A domain of your own: vda on two layers (declared with <backingStore>), vdb a single raw image.
WEB1 = """<domain type='kvm'>
  <name>web1</name>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/vm/web1/root.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/><source file='/vm/web1/root-base.qcow2'/><backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='/vm/web1/data.raw'/><target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


#: ``pytest.mark.anyio`` (anyio's plugin) or ``pytest.mark.asyncio`` (pytest-asyncio) on every test.
pytestmark = getattr(pytest.mark, os.environ.get("AVIRT_EXAMPLE_MARK", "anyio"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # avirt runs on asyncio


async def test_flatten_a_running_domain(avirt_test_conn: avirt.Connection) -> None:
    dom = await avirt_test_conn.lookup("test")  # running, vda on four layers
    async with avirt_test_conn.events(kinds={EventKind.BLOCK_JOB}) as events:
        assert await flatten(dom) == {"vda": "/var/lib/avirt/images/test-base.qcow2"}
        seen = []
        async for event in events:  # the job's events were queued while flatten() ran
            assert isinstance(event, avirt.BlockJobEvent)
            seen.append(event.status)
            if event.status is not BlockJobStatus.READY:
                break
    assert seen == [BlockJobStatus.READY, BlockJobStatus.COMPLETED]
    assert [i.path for i in await dom.block_chain("vda")] == ["/var/lib/avirt/images/test-base.qcow2"]
    assert await dom.state() == (DomainState.RUNNING, "booted")


async def test_flatten_a_shut_off_domain_rewrites_its_definition(
        avirt_test_conn: avirt.Connection) -> None:
    dom = await avirt_test_conn.lookup("test")
    await dom.destroy()
    assert await flatten(dom) == {"vda": "/var/lib/avirt/images/test-base.qcow2"}
    assert "<source file=\"/var/lib/avirt/images/test-base.qcow2\"/>" in await dom.xml(inactive=True)


async def test_flatten_takes_every_disk_and_leaves_single_images_alone(
        avirt_test_conn: avirt.Connection) -> None:
    dom = await avirt_test_conn.define_xml(WEB1)  # shut off: the commit runs offline
    assert await flatten(dom) == {"vda": "/vm/web1/root-base.qcow2"}
    assert [i.path for i in await dom.block_chain("vda")] == ["/vm/web1/root-base.qcow2"]
    assert await flatten(dom) == {}  # flat already: nothing to do


async def test_flatten_reports_a_busy_disk(avirt_test_conn: avirt.Connection) -> None:
    dom = await avirt_test_conn.lookup("test")
    job = await dom.block_pull("vda", bandwidth=1)  # someone else's job, held back by its bandwidth
    with pytest.raises(avirt.errors.OperationInvalidError, match="already has a block job"):
        await flatten(dom)
    await job.abort()


# -- run without pytest ----------------------------------------------------------------------------------


async def main() -> int:
    tests: list[tuple[str, Callable[[avirt.Connection], Awaitable[None]]]] = [
        (name, func) for name, func in globals().items()
        if name.startswith("test_") and inspect.isfunction(func)]
    for name, test in tests:
        async with avirt.connect("test:///default") as connection:
            await test(connection)
        print(f"ok  {name}")
    print(f"{len(tests)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
