"""Every bad input a typed error: generated and mutated inputs through the public API.

Each test drives one way in (``define_xml``, connection URIs, state directories, names and paths) with
inputs from :mod:`tests.fuzzing` on a bounded, derandomized budget, and checks the contract: success
or an :class:`~avirt.errors.AvirtError`, no hang, and nothing written for a refused input. A definition
that is accepted must also come back: its own ``xml(inactive=True)`` defines again.

The connections are opened once per module (the QEMU driver asks QEMU for its machine types at the
first define) on an event loop in a thread of its own, so that each example is a plain blocking call.
Bugs the fuzzer found are pinned by plain regression tests at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import example, given
from hypothesis import strategies as st

import avirt
from avirt.connection import Connection
from avirt.errors import AvirtError, HostError, InvalidXMLError
from avirt.uri import ConnectionURI, InvalidURIError
from tests.fuzzing import (
    FUZZ,
    FUZZ_MORE,
    NASTY,
    SEEDS,
    Outcome,
    guarded,
    mutated_definitions,
    nasty_text,
    picture,
    uris,
    weird_names,
    xmlish_text,
)


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


async def _connect(uri: str, state_dir: Path | None = None) -> Connection:
    return await avirt.connect(uri, state_dir=state_dir)


@pytest.fixture(scope="module")
def qemu_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "state"


@pytest.fixture(scope="module")
def qemu_conn(portal: BlockingPortal, qemu_state: Path) -> Iterator[Connection]:
    conn = portal.call(_connect, "qemu:///session", qemu_state)
    yield conn
    portal.call(conn.close)


@pytest.fixture(scope="module")
def test_conn(portal: BlockingPortal) -> Iterator[Connection]:
    conn = portal.call(_connect, "test:///default")
    yield conn
    portal.call(conn.close)


def define_checked(portal: BlockingPortal, conn: Connection, xml: str, state: Path | None) -> Outcome:
    """define_xml under the contract; an accepted definition must define again from its own XML, and is
    undefined afterwards so that every example starts from the same state."""
    before = picture(state) if state else {}
    outcome = portal.call(guarded, conn.define_xml, xml)
    if outcome.error is not None:
        assert state is None or picture(state) == before, f"refused ({outcome.error}) but wrote"
        return outcome
    dom: avirt.Domain = outcome.value
    again = portal.call(guarded, conn.define_xml, portal.call(partial(dom.xml, inactive=True)))
    assert again.error is None, f"its own XML is refused: {again.error}"
    portal.call(dom.undefine)
    return outcome


# -- define_xml ----------------------------------------------------------------------------------------


@FUZZ_MORE
@given(mutated_definitions())
def test_mutated_definitions_on_the_qemu_driver(portal: BlockingPortal, qemu_conn: Connection,
                                                qemu_state: Path, xml: str) -> None:
    define_checked(portal, qemu_conn, xml, qemu_state)


@FUZZ_MORE
@given(mutated_definitions())
def test_mutated_definitions_on_the_test_driver(portal: BlockingPortal, test_conn: Connection,
                                                xml: str) -> None:
    define_checked(portal, test_conn, xml, None)


@FUZZ
@given(st.one_of(xmlish_text(), nasty_text()))
def test_random_text_is_refused_as_invalid_xml(portal: BlockingPortal, qemu_conn: Connection,
                                               qemu_state: Path, text: str) -> None:
    outcome = define_checked(portal, qemu_conn, text, qemu_state)
    assert isinstance(outcome.error, InvalidXMLError | avirt.errors.UnsupportedError)


@FUZZ
@given(name=weird_names(), path=st.one_of(nasty_text(), weird_names()),
       where=st.sampled_from(["disk", "kernel", "loader", "nvram", "serial"]))
@example(name="/", path="/vm/a.qcow2", where="disk")
@example(name="..", path="..", where="disk")
@example(name="x" * 200, path="x" * 300, where="kernel")
@example(name="web\udcff", path="/vm/\udcff.qcow2", where="disk")  # not UTF-8: surrogateescape
def test_weird_names_and_paths_in_definitions(portal: BlockingPortal, qemu_conn: Connection,
                                              qemu_state: Path, name: str, path: str, where: str) -> None:
    esc = path.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")
    parts = {
        "disk": (f"<disk type='file' device='disk'><source file='{esc}'/><target dev='vda'/></disk>", ""),
        "serial": (f"<serial type='file'><source path='{esc}'/></serial>", ""),
        "kernel": ("", f"<kernel>{esc}</kernel>"),
        "loader": ("", f"<loader readonly='yes' type='pflash'>{esc}</loader>"),
        "nvram": ("", f"<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
                      f"<nvram>{esc}</nvram>"),
    }
    devices, os_extra = parts[where]
    xml = (f"<domain type='qemu'><name>{name.replace('&', '&amp;').replace('<', '&lt;')}</name>"
           f"<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='q35'>hvm</type>{os_extra}</os>"
           f"<devices>{devices}</devices></domain>")
    define_checked(portal, qemu_conn, xml, qemu_state)


# -- connecting ----------------------------------------------------------------------------------------


@FUZZ
@given(uris())
@example("qemu://[::1/session")
@example("qemu+ssh://[::1/session")
def test_uris_parse_or_raise_invalid_uri(portal: BlockingPortal, uri: str) -> None:
    try:
        parsed = ConnectionURI.parse(uri)
        parsed.check_supported()
    except AvirtError:
        # connect() must refuse it the same way, before touching any host
        refused = portal.call(guarded, _connect, uri, Path("/nonexistent/never-made"))
        assert refused.error is not None
        return
    if parsed.scheme == "test":  # the only URIs that connect without QEMU or a network
        outcome = portal.call(guarded, _connect, uri)
        assert outcome.error is None, outcome.error
        portal.call(outcome.value.close)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=20)), min_size=1, max_size=3))
@example([".."])
@example(["a\x00b"])
@example(["\udcff"])
@example(["y" * 300])
@example(["file", "below-a-file"])
def test_state_directories(portal: BlockingPortal, tmp_path_factory: pytest.TempPathFactory,
                           parts: list[str]) -> None:
    """Any state directory below a private base: it works, or connect() says why it cannot be used."""
    base = tmp_path_factory.mktemp("states") / "a" / "b" / "c"
    base.mkdir(parents=True)
    (base / "file").write_text("not a directory")
    state_dir = base.joinpath(*(p.lstrip("/") or "." for p in parts))
    outcome = portal.call(guarded, _connect, "qemu:///session", state_dir)
    if outcome.error is None:
        portal.call(outcome.value.close)
    else:
        assert isinstance(outcome.error, HostError), outcome.error
        assert not (base / "file").is_dir()


# -- names given to calls ------------------------------------------------------------------------------


@FUZZ
@given(name=weird_names(), disk=weird_names(), other=weird_names())
def test_weird_names_in_domain_calls(portal: BlockingPortal, test_conn: Connection, name: str, disk: str,
                                     other: str) -> None:
    found = portal.call(guarded, test_conn.lookup, name)
    assert found.error is not None or name in (found.value.name, found.value.uuid)
    dom = portal.call(test_conn.lookup, "test")
    for call, args, kwargs in [
        (dom.block_chain, (disk,), {}),
        (dom.block_commit, (disk,), {"base": other}),
        (dom.block_pull, (disk,), {"base": other}),
        (dom.block_job, (disk,), {}),
        (dom.snapshot_disks, (other,), {"disks": [disk]}),
        (dom.metadata, (other,), {}),
    ]:
        outcome = portal.call(partial(guarded, call, *args, **kwargs))
        if isinstance(outcome.value, avirt.BlockJob):
            portal.call(outcome.value.abort)


# -- regressions found by the fuzzer -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_state_directory_below_a_file_is_a_host_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(HostError, match=r"cannot create .*/file/state: Not a directory"):
        await avirt.connect("qemu:///session", state_dir=tmp_path / "file" / "state")


@pytest.mark.anyio
async def test_a_state_directory_with_a_nul_byte_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="embedded null byte"):
        await avirt.connect("qemu:///session", state_dir=str(tmp_path / "a\x00b"))
    assert list(tmp_path.iterdir()) == []


def test_an_unclosed_ipv6_host_is_an_invalid_uri() -> None:
    with pytest.raises(InvalidURIError, match=r"\[::1"):
        ConnectionURI.parse("qemu+ssh://[::1/session")


def test_the_seeds_define_as_they_are(portal: BlockingPortal, test_conn: Connection) -> None:
    """The mutations start from documents the driver accepts, or the fuzzing would stop at the door."""
    accepted = [define_checked(portal, test_conn, seed, None).error is None for seed in SEEDS]
    assert sum(accepted) >= len(SEEDS) - 5

