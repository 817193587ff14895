"""Domain lifecycle on real QEMU (firmware-only q35 guests: no OS needed for these calls)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from avirt import DomainState
from avirt.connection import Connection
from avirt.errors import (
    DomainExistsError,
    DomainNotFoundError,
    DomainStartError,
    OperationInvalidError,
    OperationTimeoutError,
)
from tests.waiting import wait_for_state
from tests.xmls import XMLFactory

pytestmark = pytest.mark.anyio

#: Each test runs on this machine and on a host reached over SSH (tests/sshd.py).
HOSTS = ("local", "ssh")
S = DomainState


async def test_define_start_suspend_resume_destroy_undefine(conn: Connection, xml: XMLFactory,
                                                              state_dir: Path) -> None:
    dom = await conn.define_xml(xml("web1"))
    assert await dom.state() == (S.SHUTOFF, "unknown")
    assert (state_dir / "domains/web1/domain.xml").exists()

    await dom.start()
    assert await dom.state() == (S.RUNNING, "booted")
    run = state_dir / "run/web1"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert stat.S_IMODE((run / "qmp.sock").stat().st_mode) == 0o600
    pid = int((run / "qemu.pid").read_text())
    assert Path(f"/proc/{pid}").exists()

    await dom.suspend()
    assert await dom.state() == (S.PAUSED, "user")
    await dom.suspend()  # already paused: nothing to do, as in libvirt
    await dom.resume()
    assert await dom.state() == (S.RUNNING, "unpaused")

    info = await dom.info()
    assert (info.state, info.max_memory_kib, info.vcpus) == (S.RUNNING, 64 * 1024, 1)

    await dom.destroy()
    assert await dom.state() == (S.SHUTOFF, "destroyed")
    assert not run.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

    await dom.undefine()
    assert not (state_dir / "domains/web1").exists()
    with pytest.raises(DomainNotFoundError):
        await conn.lookup("web1")


async def test_start_paused_then_resume(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("p1"))
    await dom.start(paused=True)
    assert await dom.state() == (S.PAUSED, "user")
    await dom.resume()
    assert await dom.state() == (S.RUNNING, "unpaused")
    await dom.destroy()


async def test_calls_the_state_forbids_fail_at_once(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("s1"))
    for call in (dom.suspend, dom.resume, dom.destroy, dom.reboot, dom.reset, dom.shutdown):
        with pytest.raises(OperationInvalidError, match="shutoff"):
            await call()
    await dom.start()
    with pytest.raises(OperationInvalidError, match="cannot start domain 's1': it is running"):
        await dom.start()
    with pytest.raises(OperationInvalidError, match="cannot resume"):
        await dom.resume()
    await dom.destroy()


async def test_lookup_by_name_and_uuid_and_list(conn: Connection, xml: XMLFactory) -> None:
    a = await conn.define_xml(xml("a"))
    b = await conn.define_xml(xml("b"))
    assert await conn.lookup("a") == a
    assert await conn.lookup(b.uuid.upper()) == b
    assert [d.name for d in await conn.list_domains()] == ["a", "b"]
    await a.start()
    assert [d.name for d in await conn.list_domains(state=S.RUNNING)] == ["a"]
    assert [d.name for d in await conn.list_domains(state=S.SHUTOFF)] == ["b"]
    await a.destroy()
    with pytest.raises(DomainNotFoundError):
        await conn.lookup("nope")


async def test_redefine_updates_and_uuid_clash_is_refused(conn: Connection, xml: XMLFactory,
                                                           state_dir: Path) -> None:
    dom = await conn.define_xml(xml("r1", memory_mib=64))
    text = (await dom.xml()).replace("65536", "131072")
    same = await conn.define_xml(text)
    assert same == dom
    assert (await dom.info()).max_memory_kib == 131072
    assert "131072" in (state_dir / "domains/r1/domain.xml").read_text()
    other_uuid = xml("r1").replace("<name>", "<uuid>00000000-0000-4000-8000-000000000001</uuid><name>")
    with pytest.raises(DomainExistsError):
        await conn.define_xml(other_uuid)
    stolen = text.replace("<name>r1</name>", "<name>r2</name>")
    with pytest.raises(DomainExistsError, match="r1"):
        await conn.define_xml(stolen)
    # Once r1 is gone its UUID is free, under another name, and found by UUID under that name only.
    await dom.undefine()
    with pytest.raises(DomainNotFoundError):
        await conn.lookup(dom.uuid)
    moved = await conn.define_xml(stolen)
    assert moved.name == "r2" and await conn.lookup(dom.uuid) == moved


async def test_transient_domain_disappears_when_it_stops(conn: Connection, xml: XMLFactory,
                                                         state_dir: Path) -> None:
    dom = await conn.create_xml(xml("t1"))
    assert await dom.state() == (S.RUNNING, "booted")
    assert not (state_dir / "domains/t1").exists()
    with pytest.raises(OperationInvalidError, match="transient"):
        await dom.undefine()
    with pytest.raises(DomainExistsError):
        await conn.create_xml(xml("t1"))
    await dom.destroy()
    with pytest.raises(DomainNotFoundError):
        await conn.lookup("t1")
    assert not (state_dir / "run/t1").exists()


async def test_undefine_running_domain_makes_it_transient(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("u1"))
    await dom.start()
    await dom.undefine()
    assert await dom.state() == (S.RUNNING, "booted")
    await dom.destroy()
    with pytest.raises(DomainNotFoundError):
        await conn.lookup("u1")


async def test_missing_disk_is_named_before_qemu_starts(conn: Connection, xml: XMLFactory,
                                                         tmp_path: Path, state_dir: Path) -> None:
    missing = tmp_path / "nope.qcow2"
    dom = await conn.define_xml(xml("d1", disks=[("vda", str(missing), "qcow2")]))
    with pytest.raises(DomainStartError, match=f"disk vda image {missing} does not exist"):
        await dom.start()
    assert await dom.state() == (S.SHUTOFF, "unknown")
    assert not (state_dir / "run/d1").exists()  # nothing was spawned


async def test_of_several_missing_files_the_first_in_the_definition_is_named(
        conn: Connection, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    # The files are looked at all at once; the refusal is still the one a look in order would give.
    first, second = tmp_path / "first.qcow2", tmp_path / "second.qcow2"
    dom = await conn.define_xml(xml("d2", disks=[("vda", str(first), "qcow2"),
                                                 ("vdb", str(second), "qcow2")]))
    with pytest.raises(DomainStartError, match=f"disk vda image {first} does not exist"):
        await dom.start()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(first), "16M"], check=True)
    with pytest.raises(DomainStartError, match=f"disk vdb image {second} does not exist"):
        await dom.start()
    assert not (state_dir / "run/d2").exists()  # nothing was spawned


async def test_qemu_failing_to_start_reports_its_log(conn: Connection, xml: XMLFactory,
                                                      state_dir: Path) -> None:
    # Far more guest RAM than the address space QEMU will map: QEMU itself refuses at start-up.
    dom = await conn.define_xml(xml("f1", memory_mib=64 * 1024 * 1024 * 1024))
    with pytest.raises(DomainStartError) as caught:
        await dom.start()
    assert "qemu-system-x86_64" in caught.value.log
    assert await dom.state() == (S.SHUTOFF, "unknown")
    assert not (state_dir / "run/f1").exists()


async def test_tcg_forced_by_domain_type_qemu(conn: Connection, xml: XMLFactory, state_dir: Path) -> None:
    dom = await conn.define_xml(xml("tcg1", type="qemu"))
    await dom.start()
    pid = int((state_dir / "run/tcg1/qemu.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-accel") + 1] == b"tcg"
    await dom.destroy()


async def test_kvm_domain_uses_kvm_or_says_why_not(conn: Connection, xml: XMLFactory, state_dir: Path,
                                                    kvm_usable: bool) -> None:
    caps = await conn.capabilities()
    assert caps["kvm"] is kvm_usable
    assert caps["qemu_version"].count(".") == 2
    dom = await conn.define_xml(xml("kvm1", type="kvm"))
    if not kvm_usable:
        with pytest.raises(DomainStartError, match="KVM is not usable"):
            await dom.start()
        return
    await dom.start()
    pid = int((state_dir / "run/kvm1/qemu.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-accel") + 1] == b"kvm"
    await dom.destroy()


async def test_reset_keeps_it_running(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("rs1"))
    await dom.start()
    await dom.reset()
    assert await dom.state() == (S.RUNNING, "booted")
    await dom.destroy()


async def test_shutdown_wait_times_out_when_the_guest_ignores_the_button(conn: Connection,
                                                                          xml: XMLFactory) -> None:
    # Firmware with no OS never answers the ACPI power button.
    dom = await conn.define_xml(xml("sd1"))
    await dom.start()
    with pytest.raises(OperationTimeoutError, match=r"did not shut off within 0\.5 s"):
        await dom.shutdown(wait=0.5)
    assert (await dom.state())[0] is S.RUNNING
    await dom.destroy()


async def test_sigkill_from_outside_leaves_it_shut_off_crashed(conn: Connection, xml: XMLFactory,
                                                               state_dir: Path) -> None:
    dom = await conn.define_xml(xml("k1"))
    await dom.start()
    pid = int((state_dir / "run/k1/qemu.pid").read_text())
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    await wait_for_state(dom, S.SHUTOFF)
    assert await dom.state() == (S.SHUTOFF, "crashed")
    assert not (state_dir / "run/k1").exists()
    await dom.start()  # and it can be started again
    assert (await dom.state())[0] is S.RUNNING
    await dom.destroy()


async def test_destroy_escalates_when_qemu_ignores_quit(conn: Connection, xml: XMLFactory,
                                                        state_dir: Path) -> None:
    dom = await conn.define_xml(xml("stop1"))
    await dom.start()
    pid = int((state_dir / "run/stop1/qemu.pid").read_text())
    os.kill(pid, 19)  # SIGSTOP: QEMU can answer neither quit nor SIGTERM, only SIGKILL ends it
    await dom.destroy()
    assert await dom.state() == (S.SHUTOFF, "destroyed")


async def test_nic_gets_a_stable_mac_at_define_time(conn: Connection, xml: XMLFactory) -> None:
    dom = await conn.define_xml(xml("n1", extra_devices="<interface type='user'><model type='virtio'/>"
                                                       "</interface>"))
    first = await dom.xml(inactive=True)
    assert "<mac address=\"52:54:00:" in first
    await dom.start()
    assert first.split("<mac")[1].split("/>")[0] in await dom.xml()
    await dom.destroy()
    assert await dom.xml(inactive=True) == first


async def test_broken_backing_chain_is_named_before_qemu_starts(conn: Connection, xml: XMLFactory,
                                                                tmp_path: Path, state_dir: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "8M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top], check=True)
    base.unlink()
    dom = await conn.define_xml(xml("chain1", disks=[("vda", str(top), "qcow2")]))
    with pytest.raises(DomainStartError, match=f"disk vda: .*{base}"):
        await dom.start()
    assert not (state_dir / "run/chain1").exists()


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06])
async def test_a_cancelled_start_leaves_no_untracked_qemu(conn: Connection, xml: XMLFactory,
                                                          state_dir: Path, delay: float) -> None:
    import anyio

    dom = await conn.define_xml(xml("c1"))
    with anyio.move_on_after(delay):
        await dom.start()
    state, _ = await dom.state()
    if state is S.SHUTOFF:
        assert not (state_dir / "run/c1").exists()  # nothing was spawned
        return
    pid = int((state_dir / "run/c1/qemu.pid").read_text())
    await dom.destroy()  # whatever was spawned is tracked, so it can be stopped
    assert await dom.state() == (S.SHUTOFF, "destroyed")
    assert not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
