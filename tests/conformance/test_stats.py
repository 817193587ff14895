"""Bulk statistics on every driver: the same fields, the same numbers for states, the same refusals.

The counters themselves (bytes a guest wrote, CPU time) are checked against real guests in
tests/test_domstats.py; here what must agree between the drivers is which fields a domain reports in
each state and group.
"""

from __future__ import annotations

import pytest

from avirt.errors import DomainNotFoundError, InvalidArgumentError, OperationInvalidError
from tests.conformance.conftest import World

pytestmark = pytest.mark.anyio


async def test_running_and_shut_off_domains_report_their_groups(world: World) -> None:
    on, chain = await world.chain_domain("st-on")
    off = await world.conn.define_xml(world.xml("st-off"))
    found = {s.domain.name: s for s in await world.conn.all_domain_stats()}
    assert set(found) == {"st-on", "st-off"}
    assert found["st-off"].params == {"state.state": 5, "state.reason": 0}  # shut off, unknown
    running = found["st-on"].params
    assert running["state.state"] == 3 and running["state.reason"] == 1  # paused by the user
    assert not found["st-on"].unresponsive
    assert running["cpu.time"] >= 0
    assert running["balloon.maximum"] == 64 * 1024
    assert running["vcpu.current"] == running["vcpu.maximum"] == 1
    assert {"vcpu.0.state", "vcpu.0.time"} <= set(running)
    assert running["block.count"] == 1
    assert running["block.0.name"] == "vda"
    assert running["block.0.path"] == str(chain.active)
    assert running["block.0.capacity"] > 0
    assert running["block.0.wr.bytes"] == 0 and running["block.0.threshold"] == 0
    assert found["st-on"].domain == on and found["st-off"].domain == off


async def test_groups_and_domains_choose_what_is_gathered(world: World) -> None:
    on, _ = await world.chain_domain("st-pick")
    await world.conn.define_xml(world.xml("st-other"))
    [only] = await world.conn.all_domain_stats({"block"}, [on])
    assert only.domain == on
    assert not any(k.startswith(("state.", "cpu.", "vcpu.", "balloon.")) for k in only.params)
    assert only.params["block.count"] == 1
    [by_name] = await world.conn.all_domain_stats(["state"], ["st-pick"])
    assert by_name.params == {"state.state": 3, "state.reason": 1}
    with pytest.raises(InvalidArgumentError, match="unknown statistics group perf"):
        await world.conn.all_domain_stats({"perf"})
    with pytest.raises(DomainNotFoundError):
        await world.conn.all_domain_stats(None, ["st-nowhere"])


async def test_block_stats_of_one_disk(world: World) -> None:
    on, _ = await world.chain_domain("st-blk")
    counters = await on.block_stats("vda")
    assert set(counters) == {"rd_operations", "rd_bytes", "rd_total_times", "wr_operations", "wr_bytes",
                             "wr_total_times", "flush_operations", "flush_total_times"}
    assert counters["wr_bytes"] == 0
    with pytest.raises(InvalidArgumentError, match="no disk vdz"):
        await on.block_stats("vdz")
    await on.destroy()
    with pytest.raises(OperationInvalidError, match="not running"):
        await on.block_stats("vda")


async def test_a_block_threshold_shows_in_the_statistics(world: World) -> None:
    dom, _ = await world.chain_domain("st-thr")
    await dom.set_block_threshold("vda", 4 << 20)
    [record] = await world.conn.all_domain_stats({"block"}, [dom])
    assert record.params["block.0.threshold"] == 4 << 20
    await dom.set_block_threshold("vda[2]", 1 << 20)  # a backing layer: not the disk's own threshold
    await dom.set_block_threshold("vda", 0)
    [record] = await world.conn.all_domain_stats({"block"}, [dom])
    assert record.params["block.0.threshold"] == 0
    with pytest.raises(OperationInvalidError, match="has only 4 layers"):
        await dom.set_block_threshold("vda[4]", 1)
    with pytest.raises(OperationInvalidError, match="no disk vdz"):
        await dom.set_block_threshold("vdz", 1)
    with pytest.raises(InvalidArgumentError):
        await dom.set_block_threshold("vda", -1)
    await dom.destroy()
    with pytest.raises(OperationInvalidError, match="not running"):
        await dom.set_block_threshold("vda", 1)
