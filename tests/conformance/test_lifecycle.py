"""Lifecycle on both drivers: which calls each state allows, the errors, and the events of each transition."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from avirt import Domain, DomainState, Event, EventKind, LifecycleEvent, LifecycleType, RebootEvent
from avirt.errors import DomainNotFoundError, OperationInvalidError, OperationTimeoutError
from tests.conformance.conftest import World
from tests.events_help import lifecycle, read_until

pytestmark = pytest.mark.anyio
S = DomainState
L = LifecycleType


def _is(type: LifecycleType, detail: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, LifecycleEvent) and (e.type, e.detail) == (type, detail)


async def test_every_call_and_its_lifecycle_events_in_order(world: World) -> None:
    conn, xml = world.conn, world.xml
    async with conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        dom = await conn.define_xml(xml("ev1"))
        await conn.define_xml(xml("ev1").replace("<name>", f"<uuid>{dom.uuid}</uuid><name>"))
        await dom.start()
        await dom.suspend()
        await dom.suspend()  # already paused: nothing to do, nothing to announce
        await dom.resume()
        await dom.destroy()
        await dom.start(paused=True)
        await dom.destroy()
        await dom.undefine()
        events = await read_until(stream, _is(L.UNDEFINED, "removed"))
    assert lifecycle(events) == [
        ("DEFINED", "added"), ("DEFINED", "updated"), ("STARTED", "booted"), ("SUSPENDED", "paused"),
        ("RESUMED", "unpaused"), ("STOPPED", "destroyed"), ("STARTED", "booted"), ("SUSPENDED", "paused"),
        ("STOPPED", "destroyed"), ("UNDEFINED", "removed")]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.domain == "ev1" and e.uuid == dom.uuid for e in events)


async def test_states_and_reasons_after_each_call(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("st1", memory_mib=64))
    assert await dom.state() == (S.SHUTOFF, "unknown")
    await dom.start()
    assert await dom.state() == (S.RUNNING, "booted")
    info = await dom.info()
    assert (info.state, info.max_memory_kib, info.memory_kib, info.vcpus) == (S.RUNNING, 65536, 65536, 1)
    await dom.suspend()
    assert await dom.state() == (S.PAUSED, "user")
    await dom.resume()
    assert await dom.state() == (S.RUNNING, "unpaused")
    await dom.reset()
    assert (await dom.state())[0] is S.RUNNING
    await dom.destroy()
    assert await dom.state() == (S.SHUTOFF, "destroyed")
    assert (await dom.info()).state is S.SHUTOFF
    await dom.start(paused=True)
    assert await dom.state() == (S.PAUSED, "user")
    await dom.destroy()


async def test_calls_the_state_forbids_fail_at_once(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("s1"))
    for call in (dom.suspend, dom.resume, dom.destroy, dom.reboot, dom.reset, dom.shutdown):
        with pytest.raises(OperationInvalidError, match="shutoff"):
            await call()
    await dom.start()
    with pytest.raises(OperationInvalidError, match="cannot start domain 's1': it is running"):
        await dom.start()
    with pytest.raises(OperationInvalidError, match="cannot resume"):
        await dom.resume()
    await dom.suspend()
    with pytest.raises(OperationInvalidError, match="cannot reboot domain 's1': it is paused"):
        await dom.reboot()
    with pytest.raises(OperationInvalidError, match="cannot start"):
        await dom.start()
    await dom.destroy()
    with pytest.raises(OperationInvalidError, match="is not running"):
        await dom.qemu_monitor_command("query-status")


async def test_reset_is_a_reboot_event_and_keeps_the_state(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("rs1"))
    await dom.start(paused=True)
    async with world.conn.events(kinds={EventKind.REBOOT, EventKind.LIFECYCLE}, domain=dom) as stream:
        await dom.reset()
        (event,) = await read_until(stream, lambda e: True)
    assert isinstance(event, RebootEvent) and event.domain == "rs1"
    assert await dom.state() == (S.PAUSED, "user")
    await dom.destroy()


async def test_transient_domain_disappears_when_it_stops(world: World) -> None:
    async with world.conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        dom = await world.conn.create_xml(world.xml("t1"))
        assert await dom.state() == (S.RUNNING, "booted")
        with pytest.raises(OperationInvalidError, match="transient"):
            await dom.undefine()
        await dom.destroy()
        events = await read_until(stream, _is(L.STOPPED, "destroyed"))
    assert lifecycle(events) == [("STARTED", "booted"), ("STOPPED", "destroyed")]
    with pytest.raises(DomainNotFoundError):
        await world.conn.lookup("t1")
    with pytest.raises(DomainNotFoundError):
        await dom.state()


async def test_transient_domain_created_paused(world: World) -> None:
    async with world.conn.events(kinds={EventKind.LIFECYCLE}) as stream:
        dom = await world.conn.create_xml(world.xml("t2"), paused=True)
        events = await read_until(stream, _is(L.SUSPENDED, "paused"))
    assert lifecycle(events) == [("STARTED", "booted"), ("SUSPENDED", "paused")]
    assert await dom.state() == (S.PAUSED, "user")
    await dom.destroy()


async def test_undefine_running_domain_makes_it_transient(world: World) -> None:
    dom = await world.conn.define_xml(world.xml("u1"))
    await dom.start()
    await dom.undefine()
    assert await dom.state() == (S.RUNNING, "booted")
    assert "<domain" in await dom.xml(inactive=True)  # no definition left: the live one
    await dom.destroy()
    with pytest.raises(DomainNotFoundError):
        await world.conn.lookup("u1")


async def test_power_button_unheard_without_acpi(world: World) -> None:
    # Without <acpi/> the machine has no ACPI power button: the guest never hears it (on QEMU too).
    dom = await world.conn.define_xml(world.xml("noacpi").replace("<features><acpi/></features>", ""))
    await dom.start(paused=True)
    with pytest.raises(OperationTimeoutError, match=r"did not shut off within 0\.3 s"):
        await dom.shutdown(wait=0.3)
    assert (await dom.state())[0] is S.PAUSED
    await dom.destroy()


@pytest.mark.guest
async def test_reboot_then_shutdown_of_a_guest_os(guest_world: World) -> None:
    world = guest_world
    dom: Domain = await world.conn.define_xml(world.guest_xml("os1"))
    await dom.start()
    await world.booted("os1")
    async with world.conn.events(kinds={EventKind.LIFECYCLE, EventKind.REBOOT}, domain=dom) as stream:
        await dom.reboot()
        rebooted = await read_until(stream, _is(L.STARTED, "booted"))
        assert [type(e).__name__ for e in rebooted] == ["LifecycleEvent", "RebootEvent", "LifecycleEvent"]
        assert lifecycle(rebooted) == [("SHUTDOWN", "guest"), ("STARTED", "booted")]
        assert await dom.state() == (S.RUNNING, "booted")
        await world.booted("os1", times=2)
        await dom.shutdown(wait=60)
        stopped = await read_until(stream, _is(L.STOPPED, "shutdown"))
    assert lifecycle(stopped) == [("SHUTDOWN", "guest"), ("STOPPED", "shutdown")]
    assert await dom.state() == (S.SHUTOFF, "shutdown")
