"""The QEMU guest agent on real QEMU: qemu-ga in the tiny test guest, reached through ``Domain.agent``.

One guest is booted for the module (TCG boots take seconds) and the tests use it in order: facts,
exec, freeze and thaw (a write in the guest held until the thaw), quiesced snapshots (the frozen data is
in the image below the overlay; a failing snapshot still thaws), an agent that stops answering and comes
back, a client program, the CLI, and last a reboot through the agent (the session syncs with the new
agent). The guest's data disk is formatted and mounted by the guest itself through guest-exec.

The test driver's made-up agent is checked at the end against the same calls.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import avirt
from avirt import AgentReason, AgentState, Connection, Domain, DomainState
from avirt.errors import (
    AgentCommandError,
    AgentTimeoutError,
    AgentUnavailableError,
    ImageError,
    InvalidArgumentError,
    OperationInvalidError,
    OperationTimeoutError,
)
from tests.events_help import read_until
from tests.guest import BASE_CMDLINE, GuestImages
from tests.sshd import SSHServer
from tests.test_cli import CLI, clean_env
from tests.waiting import wait_for_serial
from tests.xmls import XMLFactory

pytestmark = [pytest.mark.anyio, pytest.mark.guest]

AGENT_CHANNEL = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
MAC = "52:54:00:aa:00:01"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide: the booted guest and its connection are shared by the tests


@dataclass
class Booted:
    conn: Connection
    dom: Domain
    serial: Path
    disk: Path
    state_dir: Path
    images: GuestImages


def guest_xml(name: str, images: GuestImages, serial: Path, disk: Path, devices: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{images.kernel}</kernel>
    <initrd>{images.initrd}</initrd><cmdline>{BASE_CMDLINE}</cmdline></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='{MAC}'/><model type='virtio'/></interface>
    {devices}<serial type='file'><source path='{serial}'/></serial></devices>
</domain>"""


async def sh(dom: Domain, script: str, *, timeout: float = 30) -> str:
    """Run ``script`` in the guest through the agent; require exit status 0; its standard output."""
    result = await dom.agent.exec(["/bin/sh", "-c", script], timeout=timeout)
    assert result.exit_code == 0, (script, result)
    return result.stdout.decode()


async def ping_until_answered(dom: Domain, *, within: float = 60) -> None:
    """Ping until the agent answers: a guest that reboots, or an agent that restarts, needs a moment."""
    with anyio.fail_after(within):
        while True:
            try:
                await dom.agent.ping(timeout=2)
                return
            except AgentUnavailableError:  # not connected yet (or a timeout): the agent is starting
                await anyio.sleep(0.1)


@pytest.fixture(scope="module")
async def booted(tmp_path_factory: pytest.TempPathFactory,
                 guest_images: GuestImages) -> AsyncIterator[Booted]:
    tmp = tmp_path_factory.mktemp("agent")
    serial, disk, state_dir = tmp / "serial.log", tmp / "data.raw", tmp / "state"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "32M"], check=True)
    async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
        dom = await conn.define_xml(guest_xml("agentguest", guest_images, serial, disk, AGENT_CHANNEL))
        await dom.start()
        try:
            await wait_for_serial(serial, "avirt-guest: ready")
            await ping_until_answered(dom)
            # A real filesystem to freeze: ext2 made by the guest's busybox on the raw disk.
            await sh(dom, "mke2fs -q /dev/vda && mkdir -p /mnt/data && mount -t ext2 /dev/vda /mnt/data")
            yield Booted(conn, dom, serial, disk, state_dir, guest_images)
        finally:
            if (await dom.state())[0] is not DomainState.SHUTOFF:
                await dom.destroy()


async def test_ping_and_what_the_guest_reports(booted: Booted) -> None:
    dom = booted.dom
    await dom.agent.ping()
    info = await dom.agent.os_info()
    # The guest's kernel is the one the test guest was built from (its cache key starts with the release).
    assert info.kernel_release is not None and booted.images.key.startswith(info.kernel_release + "-")
    assert info.id == "avirt-test-guest" and info.machine == "x86_64"
    assert await dom.agent.host_name() == "(none)"  # the guest's /init names it only for its networks
    [fs] = await dom.agent.fs_info()
    assert (fs.mountpoint, fs.type, fs.name) == ("/mnt/data", "ext2", "vda")
    assert [d.dev for d in fs.disks] == ["/dev/vda"] and fs.disks[0].bus_type == "virtio"
    assert fs.total_bytes is not None and fs.total_bytes > 16 << 20
    await sh(dom, "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0")
    nics = {nic.name: nic for nic in await dom.agent.network_interfaces()}
    assert nics["eth0"].hardware_address == MAC
    assert [(a.type, a.address, a.prefix) for a in nics["eth0"].addresses if a.type == "ipv4"] == \
        [("ipv4", "10.0.2.15", 24)]
    # The same through interface_addresses(source='agent'), in the host sources' types: the guest's names,
    # and an old-style alias (eth0:1, reported by qemu-ga as an interface of its own) under its parent.
    await sh(dom, "ip addr add 10.0.2.16/24 dev eth0 label eth0:1")
    assert "eth0:1" in {nic.name for nic in await dom.agent.network_interfaces()}
    found = {nic.name: nic for nic in await dom.interface_addresses(source="agent")}
    assert "eth0:1" not in found and found["eth0"].hwaddr == MAC
    assert {a for a in found["eth0"].addrs if a.type == "ipv4"} == {
        avirt.InterfaceAddress("ipv4", "10.0.2.15", 24), avirt.InterfaceAddress("ipv4", "10.0.2.16", 24)}
    # The clock: set to a known second, read back at or after it (and not hours later). qemu-ga writes
    # it to the hardware clock too, so the guest's time from its RTC (None) is after it as well.
    second = 2_000_000_000
    await dom.agent.set_time(second * 10**9)
    now = await dom.agent.time()
    assert second * 10**9 <= now < (second + 3600) * 10**9
    await dom.agent.set_time(None)
    assert second * 10**9 <= await dom.agent.time() < (second + 3600) * 10**9
    await dom.agent.set_time(time.time_ns())


async def test_exec_returns_output_and_exit_status(booted: Booted) -> None:
    result = await booted.dom.agent.exec(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    data = bytes(range(256)) * 64
    assert (await booted.dom.agent.exec(["/bin/cat"], input=data)).stdout == data
    killed = await booted.dom.agent.exec(["/bin/sh", "-c", "kill -9 $$"])
    assert (killed.exit_code, killed.signal) == (None, 9)
    with pytest.raises(AgentCommandError) as missing:
        await booted.dom.agent.exec(["/no/such/program"])
    assert missing.value.error_class == "GenericError"
    with pytest.raises(AgentTimeoutError):
        await booted.dom.agent.exec(["/bin/sleep", "30"], timeout=0.5)
    # The raw command, as qemu-agent-command sends it; bad JSON is refused before anything is sent.
    assert await booted.dom.agent.command('{"execute": "guest-ping"}') == {}
    with pytest.raises(InvalidArgumentError):
        await booted.dom.agent.command("{not json")
    with pytest.raises(AgentCommandError) as unknown:
        await booted.dom.agent.command({"execute": "guest-no-such-command"})
    assert unknown.value.error_class == "CommandNotFound"


async def test_a_write_waits_while_the_filesystems_are_frozen(booted: Booted) -> None:
    dom = booted.dom
    # A writer in the guest that writes once eth0 loses its carrier: the host pulls the cable (set_link)
    # after the freeze, so the write starts while frozen, whatever the timing.
    await sh(dom, """ip link set eth0 up && (
        until [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ]; do sleep 0.05; done
        echo "avirt-guest: writer armed" >/dev/console
        while [ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; do sleep 0.05; done
        echo "avirt-guest: writing" >/dev/console
        echo held >/mnt/data/held.txt
        echo "avirt-guest: held write done" >/dev/console
    ) </dev/null >/dev/null 2>&1 &""")
    await wait_for_serial(booted.serial, "avirt-guest: writer armed")
    assert await dom.agent.fsfreeze() == 1
    assert await dom.agent.fsfreeze_status() == "frozen"
    with pytest.raises(AgentCommandError, match="frozen"):  # qemu-ga refuses most commands meanwhile
        await dom.agent.exec(["/bin/true"])
    await dom.set_link(MAC, False)
    await wait_for_serial(booted.serial, "avirt-guest: writing")
    assert await dom.agent.fsfreeze_status() == "frozen"  # a round trip into the guest: still held
    assert "held write done" not in booted.serial.read_text()
    assert await dom.agent.fsthaw() == 1
    await wait_for_serial(booted.serial, "avirt-guest: held write done")
    assert await dom.agent.fsfreeze_status() == "thawed"
    assert await sh(dom, "cat /mnt/data/held.txt") == "held\n"
    await dom.set_link(MAC, True)
    # Freezing by mount point: the one named, or none for a path where nothing is mounted.
    assert await dom.agent.fsfreeze(["/mnt/data"]) == 1
    assert await dom.agent.fsthaw() == 1
    assert await dom.agent.fsfreeze(["/no/such/mount"]) == 0
    await dom.agent.fsthaw()
    assert await dom.agent.fsfreeze_status() == "thawed"


def debugfs_cat(image: Path, path: str) -> str:
    """A file of the ext2 filesystem in ``image``, read on the host (the image QEMU no longer writes)."""
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True,
                         check=True)
    return out.stdout


async def test_a_quiesced_snapshot_holds_what_the_guest_wrote_and_leaves_it_thawed(booted: Booted) -> None:
    dom = booted.dom
    # Written without a sync: only in the guest's page cache until the freeze flushes it.
    await sh(dom, "echo consistent >/mnt/data/quiesced.txt")
    overlays = await dom.snapshot_disks("q1", quiesce=True)
    assert overlays == {"vda": str(booted.disk.with_suffix(".q1.qcow2"))}
    assert Path(overlays["vda"]).exists()
    assert await dom.agent.fsfreeze_status() == "thawed"
    # The raw image is now the overlay's read-only base: the flushed file is in it.
    assert debugfs_cat(booted.disk, "/quiesced.txt") == "consistent\n"
    await sh(dom, "echo after >/mnt/data/after.txt && sync")  # the guest writes on, into the overlay
    assert "after.txt" not in subprocess.run(["debugfs", "-R", "ls /", str(booted.disk)], capture_output=True,
                                             text=True, check=True).stdout


async def test_a_failed_quiesced_snapshot_thaws_the_guest(booted: Booted) -> None:
    dom = booted.dom
    top = Path((await dom.snapshot_disks("q2")).get("vda", ""))  # a plain snapshot: a new top
    # The next overlay's path is a link into a directory that does not exist: qemu-img cannot create it,
    # after the freeze.
    blocked = top.with_name(top.name.removesuffix(".qcow2") + ".q3.qcow2")
    blocked.symlink_to("/nonexistent-avirt-dir/overlay.qcow2")
    try:
        with pytest.raises(ImageError):
            await dom.snapshot_disks("q3", quiesce=True)
    finally:
        blocked.unlink()
    assert await dom.agent.fsfreeze_status() == "thawed"
    await sh(dom, "echo still-writable >/mnt/data/after-failure.txt")
    assert top.name in await dom.xml()  # the disk is where the failed snapshot found it


async def test_an_agent_that_does_not_answer_times_out_and_its_stale_answers_are_dropped(
        booted: Booted) -> None:
    dom = booted.dom
    # qemu-ga is stopped (SIGSTOP: its port stays open, nobody answers) until the host pulls eth0's cable.
    await sh(dom, """ip link set eth0 up && (
        until [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ]; do sleep 0.05; done
        kill -STOP $(pidof qemu-ga)
        echo "avirt-guest: qga paused" >/dev/console
        while [ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; do sleep 0.05; done
        kill -CONT $(pidof qemu-ga)
        echo "avirt-guest: qga resumed" >/dev/console
    ) </dev/null >/dev/null 2>&1 &""")
    await wait_for_serial(booted.serial, "avirt-guest: qga paused")
    with pytest.raises(AgentTimeoutError) as timed_out:
        await dom.agent.ping(timeout=1)
    assert isinstance(timed_out.value, OperationTimeoutError)
    # The controller goes on meanwhile: monitor calls and the domain's state do not wait for the agent.
    assert await dom.state() == (DomainState.RUNNING, "booted")
    assert (await dom.qemu_monitor_command("query-status"))["status"] == "running"
    with pytest.raises(AgentTimeoutError):
        await dom.agent.os_info(timeout=1)
    await dom.set_link(MAC, False)
    await wait_for_serial(booted.serial, "avirt-guest: qga resumed")
    await dom.set_link(MAC, True)
    # The agent now answers the requests that timed out, then this call's sync: only the sync with this
    # call's id counts, so the answers are not taken for one another.
    assert (await dom.agent.os_info()).id == "avirt-test-guest"
    assert await dom.agent.host_name() == "(none)"
    assert await dom.agent.fsfreeze_status() == "thawed"


async def test_an_agent_that_is_not_running_is_unavailable_at_once_and_comes_back(booted: Booted) -> None:
    restarts = booted.serial.read_text().count("avirt-guest: qga restart")
    async with contextlib.AsyncExitStack() as stack:
        # Another program watches the agent come and go: the events cross the served protocol.
        client = await stack.enter_async_context(avirt.connect("qemu:///session", state_dir=booted.state_dir))
        stream = await stack.enter_async_context(client.events(kinds={avirt.EventKind.AGENT_LIFECYCLE},
                                                               domain="agentguest"))
        await _agent_goes_and_comes_back(booted, restarts)
        seen = await read_until(stream, lambda e: getattr(e, "state", None) is AgentState.CONNECTED)
    assert [(e.state, e.reason) for e in seen if isinstance(e, avirt.AgentLifecycleEvent)] == [
        (AgentState.DISCONNECTED, AgentReason.CHANNEL), (AgentState.CONNECTED, AgentReason.CHANNEL)]


async def _agent_goes_and_comes_back(booted: Booted, restarts: int) -> None:
    dom = booted.dom
    # qemu-ga is killed in the guest and started again by /init's loop 5 s later.
    await sh(dom, "echo 5 >/run/qga-pause && (sleep 0.2; kill $(pidof qemu-ga)) "
                  "</dev/null >/dev/null 2>&1 &")
    await wait_for_serial(booted.serial, "avirt-guest: qga stopped")
    # QEMU said the port closed (VSERPORT_CHANGE): no waiting for a sync nobody would answer.
    with anyio.fail_after(30):  # the event follows the guest's close closely; the marker may come first
        while True:
            try:
                await dom.agent.ping(timeout=30)
            except AgentTimeoutError:  # a sync that began before QEMU's event
                continue
            except AgentUnavailableError as e:
                assert "not connected" in str(e)
                break
    assert await dom.state() == (DomainState.RUNNING, "booted")
    await wait_for_serial(booted.serial, "avirt-guest: qga restart", count=restarts + 1)
    await ping_until_answered(dom)  # a new agent: the session syncs with it
    assert (await dom.agent.os_info()).id == "avirt-test-guest"


async def test_another_program_reaches_the_agent_through_the_controller(booted: Booted) -> None:
    async with avirt.connect("qemu:///session", state_dir=booted.state_dir) as client:
        dom = await client.lookup("agentguest")
        await dom.agent.ping()
        assert (await dom.agent.os_info()).id == "avirt-test-guest"
        found = {nic.hwaddr: nic for nic in await dom.interface_addresses(source="agent")}
        assert found[MAC].name == "eth0" and found[MAC].addrs  # the same answer, over the wire
        result = await dom.agent.exec(["/bin/echo", "through", "the", "controller"])
        assert (result.exit_code, result.stdout) == (0, b"through the controller\n")
        with pytest.raises(AgentCommandError) as unknown:  # the agent's error, typed on the client too
            await dom.agent.command({"execute": "guest-no-such-command"})
        assert unknown.value.error_class == "CommandNotFound"


async def test_over_ssh_the_agent_is_reached_through_the_forwarded_socket(
        sshd: SSHServer, tmp_path: Path, guest_images: GuestImages) -> None:
    """A qemu+ssh:// connection driving the host directly: the channel's socket is reached over SSH, by
    the controller that started the guest and by the next one."""
    serial, disk = tmp_path / "serial.log", tmp_path / "ssh.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    uri = sshd.uri(tmp_path / "state")
    async with avirt.connect(uri) as conn:
        dom = await conn.define_xml(guest_xml("sshagent", guest_images, serial, disk, AGENT_CHANNEL))
        await dom.start()
        try:
            await wait_for_serial(serial, "avirt-guest: ready")
            await ping_until_answered(dom)
            assert (await dom.agent.os_info()).id == "avirt-test-guest"
        except BaseException:
            await dom.destroy()
            raise
    # The guest outlives its controller; the next one re-attaches, learns from QEMU that the agent's port
    # is open (no event since it came), and opens a session of its own on the channel's socket.
    async with avirt.connect(uri) as conn:
        dom = await conn.lookup("sshagent")
        try:
            result = await dom.agent.exec(["/bin/echo", "over", "ssh"])
            assert (result.exit_code, result.stdout) == (0, b"over ssh\n")
        finally:
            await dom.destroy()


async def run_cli(booted: Booted, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The ``avirt`` command, a client of this module's controller (its event loop must go on serving)."""
    return await anyio.run_process(CLI(booted.state_dir).argv(*args), env=clean_env(), check=False)


async def test_cli_commands(booted: Booted) -> None:
    info = await run_cli(booted, "guestinfo", "agentguest")
    assert info.returncode == 0, info.stderr
    values = {key.strip(): value for key, value in
              (line.split(" : ", 1) for line in info.stdout.decode().splitlines())}
    assert values["os.id"] == "avirt-test-guest" and values["fs.0.mountpoint"] == "/mnt/data"
    assert values["fs.0.disk.0.device"] == "/dev/vda"
    frozen = await run_cli(booted, "domfsfreeze", "agentguest")
    assert (frozen.returncode, frozen.stdout) == (0, b"Froze 1 filesystem(s)\n"), frozen.stderr
    status = await run_cli(booted, "qemu-agent-command", "agentguest", '{"execute":',
                           '"guest-fsfreeze-status"}')
    assert (status.returncode, status.stdout) == (0, b'{"return":"frozen"}\n'), status.stderr
    thawed = await run_cli(booted, "domfsthaw", "agentguest")
    assert (thawed.returncode, thawed.stdout) == (0, b"Thawed 1 filesystem(s)\n"), thawed.stderr
    addrs = await run_cli(booted, "domifaddr", "agentguest", "--source", "agent", "--interface", "eth0")
    assert addrs.returncode == 0, addrs.stderr
    rows = [line.split() for line in addrs.stdout.decode().splitlines()[2:]]
    assert rows[0][:2] == ["eth0", MAC] and all(row[0] in ("eth0", "-") for row in rows), rows
    assert any(row[2] == "ipv4" and row[3].endswith("/24") for row in rows), rows
    bad = await run_cli(booted, "qemu-agent-command", "agentguest", "{oops")
    assert bad.returncode == 1 and bad.stderr.decode().startswith("error: ")
    assert b"Traceback" not in bad.stderr
    snap = await run_cli(booted, "snapshot-create-as", "agentguest", "q4", "--disk-only", "--quiesce")
    assert snap.returncode == 0, snap.stderr
    assert await booted.dom.agent.fsfreeze_status() == "thawed"
    # Two more at once (each is a process of its own): the guest's clock and its filesystems as a table.
    found: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def one(*args: str) -> None:
        found[args[0]] = await run_cli(booted, *args, "agentguest")

    async with anyio.create_task_group() as group:
        group.start_soon(one, "domtime")
        group.start_soon(one, "domfsinfo")
    clock = found["domtime"]
    assert clock.returncode == 0 and clock.stdout.startswith(b"Time: "), clock.stderr
    assert abs(int(clock.stdout.split()[1]) - await booted.dom.agent.time() // 10**9) < 3600
    table = found["domfsinfo"]
    assert table.returncode == 0, table.stderr
    assert table.stdout.decode().split()[:4] == ["Mountpoint", "Name", "Type", "Target"]
    rows = [line.split() for line in table.stdout.decode().splitlines()]
    assert ["/mnt/data", "vda", "ext2", "/dev/vda"] in rows


async def test_without_the_channel_the_agent_is_unavailable(booted: Booted, tmp_path: Path) -> None:
    disk = tmp_path / "other.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "1M"], check=True)
    # No OS is needed: the refusal comes from the definition, at once.
    xml = XMLFactory("qemu")("nochannel", disks=[("vda", str(disk), "raw")])
    dom = await booted.conn.define_xml(xml)
    with pytest.raises(OperationInvalidError):  # shut off: no agent runs
        await dom.agent.ping()
    with pytest.raises(OperationInvalidError):  # a shut-off guest has nothing to quiesce
        await dom.snapshot_disks("s", quiesce=True)
    await dom.start()
    try:
        with pytest.raises(AgentUnavailableError, match="no guest agent channel"):
            await dom.agent.ping()
        with pytest.raises(AgentUnavailableError):
            await dom.snapshot_disks("s", quiesce=True)
        assert not disk.with_suffix(".s.qcow2").exists()  # refused before anything was made
        assert "other.raw" in await dom.xml()
    finally:
        await dom.destroy()
        await dom.undefine()


async def test_a_started_domain_with_the_channel_has_no_agent_yet(booted: Booted, xml: XMLFactory) -> None:
    """libvirt's DISCONNECTED with reason DOMAIN_STARTED, after the lifecycle's STARTED."""
    kinds = {avirt.EventKind.AGENT_LIFECYCLE, avirt.EventKind.LIFECYCLE}
    async with booted.conn.events(kinds=kinds) as stream:
        dom = await booted.conn.define_xml(xml("agentstart", extra_devices=AGENT_CHANNEL))
        await dom.start(paused=True)
        seen = await read_until(stream, lambda e: isinstance(e, avirt.AgentLifecycleEvent))
    try:
        assert [type(e).__name__ for e in seen] == ["LifecycleEvent", "LifecycleEvent", "LifecycleEvent",
                                                    "AgentLifecycleEvent"], seen  # defined, started, paused
        agent = seen[-1]
        assert isinstance(agent, avirt.AgentLifecycleEvent) and agent.domain == "agentstart"
        assert (agent.state, agent.reason) == (AgentState.DISCONNECTED, AgentReason.DOMAIN_STARTED)
    finally:
        await dom.destroy()
        await dom.undefine()


async def test_a_reboot_through_the_agent_then_the_new_agent_answers(booted: Booted) -> None:
    dom = booted.dom
    readies = booted.serial.read_text().count("avirt-guest: ready")
    async with booted.conn.events(kinds={avirt.EventKind.REBOOT}, domain=dom) as stream:
        await dom.agent.shutdown("reboot")
        with anyio.fail_after(60):
            await stream.__anext__()
    assert "avirt-guest: agent shutdown -r" in booted.serial.read_text()
    await wait_for_serial(booted.serial, "avirt-guest: ready", count=readies + 1)
    await ping_until_answered(dom)
    assert (await dom.agent.os_info()).id == "avirt-test-guest"
    assert await dom.agent.fs_info() == []  # a new boot: the data disk is not mounted
    with pytest.raises(InvalidArgumentError):
        await dom.agent.shutdown("sideways")
    # Power off through the agent: the domain shuts off.
    async with booted.conn.events(kinds={avirt.EventKind.LIFECYCLE}, domain=dom) as stream:
        await dom.agent.shutdown()
        with anyio.fail_after(60):
            while (await stream.__anext__()).type is not avirt.LifecycleType.STOPPED:
                pass
    assert (await dom.state())[0] is DomainState.SHUTOFF


# -- the test driver's agent --------------------------------------------------------------------------------


async def test_the_test_driver_has_a_plausible_agent() -> None:
    async with avirt.connect("test:///default") as conn:
        plain = await conn.lookup("test")
        with pytest.raises(AgentUnavailableError):
            await plain.agent.ping()
        dom = await conn.define_xml(f"""<domain type='kvm'><name>withagent</name><memory>65536</memory>
          <os><type>hvm</type></os><devices>
          <disk type='file' device='disk'><source file='/images/withagent.qcow2'/><driver type='qcow2'/>
            <target dev='vda' bus='virtio'/></disk>{AGENT_CHANNEL}
          <interface type='user'><mac address='{MAC}'/></interface></devices></domain>""")
        with pytest.raises(OperationInvalidError):
            await dom.agent.ping()
        async with conn.events(kinds={avirt.EventKind.AGENT_LIFECYCLE}) as stream:
            await dom.start()
            seen = await read_until(stream, lambda e: getattr(e, "state", None) is AgentState.CONNECTED)
        assert [(e.domain, e.state, e.reason) for e in seen if isinstance(e, avirt.AgentLifecycleEvent)] == [
            ("withagent", AgentState.DISCONNECTED, AgentReason.DOMAIN_STARTED),
            ("withagent", AgentState.CONNECTED, AgentReason.CHANNEL)]
        await dom.agent.ping()
        assert (await dom.agent.os_info()).kernel_release
        assert await dom.agent.host_name() == "withagent"
        assert [fs.mountpoint for fs in await dom.agent.fs_info()] == ["/"]
        result = await dom.agent.exec(["echo", "hi"])
        assert (result.exit_code, result.stdout) == (0, b"hi\n")
        assert (await dom.agent.exec(["cat"], input=b"x")).stdout == b"x"
        assert (await dom.agent.exec(["false"])).exit_code == 1
        assert await dom.agent.fsfreeze() == 1 and await dom.agent.fsfreeze_status() == "frozen"
        with pytest.raises(AgentCommandError, match="frozen"):
            await dom.agent.exec(["true"])
        assert await dom.agent.fsthaw() == 1
        nics = await dom.interface_addresses(source="agent")  # the agent's made-up interfaces, typed
        assert [(n.name, n.hwaddr) for n in nics] == [("lo", "00:00:00:00:00:00"), ("eth0", MAC)]
        assert nics[1].addrs == (avirt.InterfaceAddress("ipv4", "192.168.122.10", 24),)
        overlays = await dom.snapshot_disks("q", quiesce=True)
        assert overlays == {"vda": "/images/withagent.q.qcow2"}
        assert await dom.agent.fsfreeze_status() == "thawed"
        await dom.agent.set_time(10**18)
        assert 10**18 <= await dom.agent.time() < 10**18 + 3600 * 10**9
        await dom.agent.shutdown()
        assert (await dom.state())[0] is DomainState.SHUTOFF
