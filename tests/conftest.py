"""Fixtures shared by the whole suite: a private state directory per test, real QEMU, real images.

Every test gets its own state directory; whatever QEMU a test leaves behind (a failing test may) is
killed at teardown, found through the pid files of that directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import avirt
from avirt.connection import Connection
from tests import xmls
from tests.guest import GuestImages, build_guest
from tests.sshd import SSHServer
from tests.sshd import missing_reason as sshd_missing
from tests.sshd import start as start_sshd

if TYPE_CHECKING:
    from tests.test_cli import CLI


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # qemu.qmp runs on asyncio


@pytest.fixture(scope="session")
def kvm_usable() -> bool:
    """Whether QEMU starts with -accel kvm here (on a PVM-based /dev/kvm it may still not boot Linux)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    probe = subprocess.run(
        ["qemu-system-x86_64", "-machine", "none", "-accel", "kvm", "-nodefaults", "-display", "none",
         "-monitor", "stdio"], input=b"quit\n", capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def firmware_type(kvm_usable: bool) -> str:
    """The domain type for firmware-only guests: KVM where QEMU can use it, else TCG."""
    return "kvm" if kvm_usable else "qemu"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    for pidfile in path.glob("run/*/qemu.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``HOSTS = ("local", "ssh")`` runs each of its tests through both hosts."""
    hosts = getattr(metafunc.module, "HOSTS", None)
    if hosts and "host_kind" in metafunc.fixturenames:
        metafunc.parametrize("host_kind", hosts)


@pytest.fixture
def host_kind() -> str:
    return "local"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """A real OpenSSH server on 127.0.0.1 (tests/sshd.py); the remote host is this machine."""
    reason = sshd_missing()
    if reason:
        pytest.skip(reason)
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def uri(host_kind: str, state_dir: Path, request: pytest.FixtureRequest) -> str:
    """The connection URI of the host under test, with the test's state directory."""
    if host_kind == "ssh":
        server: SSHServer = request.getfixturevalue("sshd")
        return server.uri(state_dir)
    return "qemu:///session"


@pytest.fixture
async def conn(uri: str, state_dir: Path) -> AsyncIterator[Connection]:
    async with avirt.connect(uri, state_dir=None if uri.startswith("qemu+ssh") else state_dir) as connection:
        record = os.environ.get("AVIRT_RECORD_QMP")
        if record:  # how tests/data/qmp-events.jsonl was made: real QEMU's events, as QEMU sent them
            connection.subscribe(lambda ev: _record(record, ev), kinds={avirt.EventKind.QMP})
        yield connection


def _record(path: str, event: avirt.Event) -> None:
    assert isinstance(event, avirt.QMPEvent)
    seconds, micro = divmod(round(event.timestamp * 1e6), 1_000_000)
    line = {"event": event.name, "data": event.data, "timestamp": {"seconds": seconds, "microseconds": micro}}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


@pytest.fixture
def xml(firmware_type: str) -> xmls.XMLFactory:
    """``xml(name, **options)``: domain XML for a guest that needs no OS (q35 firmware only)."""
    return xmls.XMLFactory(firmware_type)


@pytest.fixture
def cli(state_dir: Path) -> CLI:
    """Runs the real ``avirt`` executable against this test's state directory."""
    from tests.test_cli import CLI

    return CLI(state_dir)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Background processes a test starts; killed at teardown if the test left them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def guest_images() -> GuestImages:
    """The tiny Linux test guest (Debian cloud kernel + busybox initramfs), built once and cached."""
    return build_guest()
