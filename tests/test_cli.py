"""The ``avirt`` command line, run for real: the installed executable as a subprocess, real QEMU.

Each test gets its own state directory (``--state-dir``) and firmware-only q35 guests. Output that arrives
over time (``avirt event``) is read line by line against a deadline, never after a sleep: :class:`Lines`
reads a pipe on a thread and :meth:`Lines.expect` waits for a matching line.

Because ``avirt event`` holds the state directory while it runs, the events it reports are caused from
outside avirt: the guest is started *before* ``event`` runs, and its QEMU is then killed with SIGKILL
(pid from ``<state_dir>/run/<name>/qemu.pid``), which avirt reports as ``stopped (failed)``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from lxml import etree

from tests.xmls import XMLFactory

COMMANDS = ["define", "undefine", "start", "shutdown", "destroy", "reboot", "reset", "suspend", "resume",
            "list", "dominfo", "domstate", "dumpxml", "domblklist", "event", "guestinfo", "domfsinfo",
            "domfsfreeze", "domfsthaw", "domtime", "qemu-agent-command"]


def avirt_executable() -> str:
    """The ``avirt`` console script of the Python running the tests (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "avirt"
    if beside.exists():
        return str(beside)
    found = shutil.which("avirt")
    assert found, "the avirt executable is not installed (pip install -e .)"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without avirt's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("AVIRT_DEFAULT_URI", "AVIRT_STATE_DIR")}
    env.update(extra)
    return env


@dataclass
class CLI:
    """``cli("start", "web1")`` runs ``avirt --state-dir <state_dir> start web1`` and returns the result."""

    state_dir: Path

    def argv(self, *args: str) -> list[str]:
        return [avirt_executable(), "--state-dir", str(self.state_dir), *args]

    def __call__(self, *args: str, input: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=90,
                              env=env if env is not None else clean_env())

    def ok(self, *args: str, input: str | None = None) -> str:
        """Run, require exit status 0 and a quiet stderr, return stdout."""
        result = self(*args, input=input)
        assert result.returncode == 0, f"avirt {' '.join(args)}: {result.returncode}\n{result.stderr}"
        assert result.stderr == "", result.stderr
        return result.stdout

    def fails(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        """Run, require exit status 1 with exactly one ``error:`` line and nothing else; return that line."""
        result = self(*args, input=input, env=env)
        return one_line_error(result)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, env=clean_env())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


class Lines:
    """The lines of a pipe, read on a thread so that a test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, wanted: Callable[[str], bool], *, timeout: float = 30) -> str:
        """The first new line for which ``wanted`` is true; AssertionError at the deadline or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout} s; saw {self.seen}") from None
            if line is None:
                self._queue.put(None)  # stay at EOF for later calls
                raise AssertionError(f"the stream ended before such a line; saw {self.seen}")
            self.seen.append(line)
            if wanted(line):
                return line

    def rest(self, *, timeout: float = 30) -> list[str]:
        """Every remaining line, up to EOF (the process has ended or is ending)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        while (line := self._queue.get_nowait()) is not None:
            self.seen.append(line)
        self._queue.put(None)
        return self.seen


def qemu_pid(state_dir: Path, name: str) -> int:
    return int((state_dir / "run" / name / "qemu.pid").read_text())


def kill_qemu(state_dir: Path, name: str) -> None:
    """End a guest's QEMU from outside avirt, as a crash or the OOM killer would."""
    os.kill(qemu_pid(state_dir, name), signal.SIGKILL)


def table_rows(text: str) -> list[list[str]]:
    """The body of a virsh-style table: the rows under the dashed rule, split into cells.

    Cells are separated by at least three spaces and never contain two in a row ("shut off").
    """
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    return [re.split(r" {2,}", line.strip()) for line in lines[rule + 1:] if line.strip()]


def write_xml(tmp_path: Path, xml: XMLFactory, name: str, **options: Any) -> Path:
    path = tmp_path / f"{name}.xml"
    path.write_text(xml(name, **options))
    return path


def define_and_start(cli: CLI, tmp_path: Path, xml: XMLFactory, *names: str) -> None:
    for name in names:
        cli.ok("define", str(write_xml(tmp_path, xml, name)))
        cli.ok("start", name)


# -- help ------------------------------------------------------------------------------------------------


HELP_ONLY = """
import sys
sys.argv = ["avirt", "--help"]
from avirt.cli import main
try:
    main()
except SystemExit:
    pass
heavy = ("lxml", "asyncssh", "qemu.qmp", "avirt.connection", "avirt.drivers.qemu.driver")
print(" ".join(m for m in heavy if m in sys.modules) or "none")
"""


def test_help_loads_no_driver_nor_xml_library() -> None:
    # What keeps `avirt --help` quick: the package imports its names on first use.
    result = subprocess.run([sys.executable, "-c", HELP_ONLY], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "none", result.stderr


def test_help_lists_every_command() -> None:
    result = subprocess.run([avirt_executable(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: avirt")
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(COMMANDS) <= listed
    assert "AVIRT_DEFAULT_URI" in result.stdout and "AVIRT_STATE_DIR" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str) -> None:
    result = subprocess.run([avirt_executable(), command, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: avirt {command}")
    assert "example" in result.stdout


def test_python_dash_m_avirt(cli: CLI) -> None:
    result = subprocess.run([sys.executable, "-m", "avirt", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("avirt "), result
    listing = subprocess.run([sys.executable, "-m", "avirt", "--state-dir", str(cli.state_dir), "list"],
                             capture_output=True, text=True, timeout=60, env=clean_env())
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[:3] == ["Id", "Name", "State"] and table_rows(listing.stdout) == []


# -- lifecycle -------------------------------------------------------------------------------------------


def test_every_lifecycle_command(cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path) -> None:
    disk = tmp_path / "web1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    path = write_xml(tmp_path, xml, "web1", disks=[("vda", str(disk), "qcow2")])

    assert cli.ok("define", str(path)) == f"Domain 'web1' defined from {path}\n"
    assert table_rows(cli.ok("list")) == []
    assert table_rows(cli.ok("list", "--all")) == [["-", "web1", "shut off"]]
    assert cli.ok("domstate", "web1") == "shut off\n"

    assert cli.ok("start", "web1") == "Domain 'web1' started\n"
    pid = str(qemu_pid(state_dir, "web1"))
    assert table_rows(cli.ok("list")) == [[pid, "web1", "running"]]
    assert cli.ok("list", "--name") == "web1\n"
    assert cli.ok("domstate", "web1") == "running\n"
    assert cli.ok("domstate", "web1", "--reason").startswith("running (")

    live = etree.fromstring(cli.ok("dumpxml", "web1").encode())
    assert live.get("id") == pid and live.findtext("name") == "web1"
    uuid = live.findtext("uuid")
    assert uuid and cli.ok("list", "--uuid") == f"{uuid}\n"
    assert etree.fromstring(cli.ok("dumpxml", "web1", "--inactive").encode()).get("id") is None
    assert cli.ok("domstate", uuid) == "running\n"  # DOM is a name or a UUID

    info = dict(line.split(":", 1) for line in cli.ok("dominfo", "web1").splitlines())
    info = {key: value.strip() for key, value in info.items()}
    assert info["Id"] == pid and info["Name"] == "web1" and info["UUID"] == uuid
    assert (info["State"], info["CPU(s)"], info["Persistent"]) == ("running", "1", "yes")
    assert info["Max memory"] == info["Used memory"] == "65536 KiB"
    assert info["CPU time"].endswith("s") and info["OS Type"] == "hvm"

    assert table_rows(cli.ok("domblklist", "web1")) == [["vda", str(disk)]]
    assert table_rows(cli.ok("domblklist", "web1", "--details")) == [["file", "disk", "vda", str(disk)]]

    assert cli.ok("suspend", "web1") == "Domain 'web1' suspended\n"
    assert cli.ok("domstate", "web1", "--reason") == "paused (user)\n"
    assert cli.ok("resume", "web1") == "Domain 'web1' resumed\n"
    assert cli.ok("domstate", "web1") == "running\n"
    assert cli.ok("reset", "web1") == "Domain 'web1' was reset\n"
    # Firmware only: the power button does nothing, so a reboot is just the button press.
    assert cli.ok("reboot", "web1") == "Domain 'web1' is being rebooted\n"
    assert "did not reboot within 0.5 s" in cli.fails("reboot", "web1", "--wait", "0.5")
    assert "did not shut off within 1 s" in cli.fails("shutdown", "web1", "--wait", "1")
    assert cli.ok("shutdown", "web1") == "Domain 'web1' is being shutdown\n"
    assert cli.ok("domstate", "web1") == "running\n"
    assert str(qemu_pid(state_dir, "web1")) == pid  # the same QEMU all along

    assert cli.ok("destroy", "web1") == "Domain 'web1' destroyed\n"
    assert cli.ok("domstate", "web1") == "shut off\n"
    assert not (state_dir / "run/web1").exists()
    assert table_rows(cli.ok("list")) == []

    assert cli.ok("start", "web1", "--paused") == "Domain 'web1' started (paused)\n"
    assert cli.ok("domstate", "web1", "--reason") == "paused (user)\n"
    cli.ok("destroy", "web1")

    assert cli.ok("undefine", "web1") == "Domain 'web1' has been undefined\n"
    assert cli.ok("list", "--all", "--name") == ""
    assert cli.fails("domstate", "web1") == "error: no domain with name or uuid 'web1'"


def test_define_from_standard_input_and_redefine(cli: CLI, xml: XMLFactory) -> None:
    assert cli.ok("define", "-", input=xml("web1")) == "Domain 'web1' defined from standard input\n"
    inactive = cli.ok("dumpxml", "web1", "--inactive")
    assert cli.ok("define", "-", input=inactive) == "Domain 'web1' defined from standard input\n"
    assert cli.ok("dumpxml", "web1", "--inactive") == inactive


# -- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["undefine", "start", "shutdown", "destroy", "reboot", "reset", "suspend",
                                     "resume", "dominfo", "domstate", "dumpxml", "domblklist"])
def test_unknown_domain(cli: CLI, command: str) -> None:
    assert cli.fails(command, "nosuch") == "error: no domain with name or uuid 'nosuch'"


def test_unknown_domain_for_event(cli: CLI) -> None:
    assert cli.fails("event", "--domain", "nosuch", "--timeout", "5") == (
        "error: no domain with name or uuid 'nosuch'")


def test_malformed_xml_names_file_and_line(cli: CLI, tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='kvm'>\n  <name>x</name>\n  <memory>1</memory\n</domain>\n")
    line = cli.fails("define", str(bad))
    assert line.startswith(f"error: {bad}: line 4: ")


def test_unreadable_file(cli: CLI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.xml"
    assert cli.fails("define", str(missing)) == f"error: {missing}: No such file or directory"


def test_call_that_the_state_forbids(cli: CLI, xml: XMLFactory) -> None:
    cli.ok("define", "-", input=xml("web1"))
    line = cli.fails("resume", "web1")
    assert "web1" in line


def test_usage_errors_exit_2(cli: CLI) -> None:
    usage_errors: list[list[str]] = [["nosuchcommand"], ["start"], ["event", "--kind", "bogus"],
                                     ["shutdown", "x", "--wait", "-1"], []]
    for args in usage_errors:
        result = cli(*args)
        assert result.returncode == 2, (args, result)
        assert "usage: avirt" in result.stderr and "Traceback" not in result.stderr


def test_uri_and_state_dir_from_options_and_environment(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    assert "not a connection URI: 'nonsense'" in cli.fails("-c", "nonsense", "list")
    # The environment gives the URI when -c does not; -c wins over it.
    env = clean_env(AVIRT_DEFAULT_URI="qemu:///elsewhere")
    assert "'/elsewhere'" in cli.fails("list", env=env)
    assert cli("-c", "qemu:///session", "list", env=env).returncode == 0
    # The environment gives the state directory when --state-dir does not.
    other = tmp_path / "other-state"
    result = subprocess.run([avirt_executable(), "define", "-"], input=xml("envguest"), capture_output=True,
                            text=True, timeout=60, env=clean_env(AVIRT_STATE_DIR=str(other)))
    assert result.returncode == 0, result.stderr
    assert (other / "domains/envguest/domain.xml").exists()


# -- events ----------------------------------------------------------------------------------------------


def test_event_json_reports_a_killed_guest_and_ends_on_ctrl_c(
        cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path,
        processes: list[subprocess.Popen[str]]) -> None:
    define_and_start(cli, tmp_path, xml, "web1")
    event = cli.spawn("event", "--loop", "--timeout", "20", "--json")
    processes.append(event)
    assert event.stdout is not None and event.stderr is not None
    out, err = Lines(event.stdout), Lines(event.stderr)
    err.expect(lambda line: "watching events" in line)

    # It holds the state directory and serves it: other commands work meanwhile, through it, and what they
    # do reaches its event stream.
    assert "web1" in cli.ok("list")
    cli.ok("suspend", "web1")
    suspended = json.loads(out.expect(lambda line: '"suspended"' in line))
    assert (suspended["domain"], suspended["detail"]) == ("web1", "paused")

    kill_qemu(state_dir, "web1")
    line = out.expect(lambda line: '"stopped"' in line)
    record = json.loads(line)
    assert {k: record[k] for k in ("kind", "domain", "type", "detail")} == {
        "kind": "lifecycle", "domain": "web1", "type": "stopped", "detail": "failed"}
    assert isinstance(record["seq"], int) and isinstance(record["timestamp"], float) and record["uuid"]

    event.send_signal(signal.SIGINT)
    assert event.wait(timeout=30) == 0
    assert all("Traceback" not in line for line in err.rest())
    assert cli.ok("domstate", "web1") == "shut off\n"


def test_event_without_loop_ends_after_the_first_event_of_its_domain(
        cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path,
        processes: list[subprocess.Popen[str]]) -> None:
    define_and_start(cli, tmp_path, xml, "web1", "web2")
    event = cli.spawn("event", "--domain", "web2", "--event", "lifecycle", "--timestamp")
    processes.append(event)
    assert event.stdout is not None and event.stderr is not None
    out, err = Lines(event.stdout), Lines(event.stderr)
    err.expect(lambda line: "watching events" in line and "web2" in line)

    kill_qemu(state_dir, "web1")
    kill_qemu(state_dir, "web2")
    assert event.wait(timeout=30) == 0  # one-shot, as virsh's event without --loop
    lines = out.rest()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\+0000: web2 lifecycle: stopped \(failed\)",
                        lines[0]), lines


def test_event_names_as_virsh_has_them(cli: CLI) -> None:
    names = cli.ok("event", "--list").split()
    assert names[0] == "lifecycle" and "block-job" in names and names[-1] == "qmp"
    for which in (["--all"], *(["--event", name] for name in
                                ("io-error-reason", "block-job-2", "pm-suspend", "metadata-change",
                                 "agent-lifecycle"))):
        result = cli("-c", "test:///default", "event", *which, "--loop", "--timeout", "0")
        assert result.returncode == 0, result.stderr
    for wrong in (["--event", "graphics"], ["--all", "--event", "lifecycle"]):
        result = cli("event", *wrong)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "does not report libvirt's 'graphics' events" in cli("event", "--event", "graphics").stderr


def test_event_timeout_ends_with_status_0(cli: CLI) -> None:
    started = time.monotonic()
    result = cli("event", "--timeout", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started >= 0.5


def test_qemu_start_failure_shows_qemus_reason(cli: CLI, xml: XMLFactory) -> None:
    # Far more memory than any host has: QEMU starts, fails to allocate it, and says so in its log.
    cli.ok("define", "-", input=xml("huge").replace("<memory unit='MiB'>64<", "<memory unit='TiB'>64000<"))
    result = cli("start", "huge")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    first, *log = result.stderr.splitlines()
    assert first.startswith("error: ") and "'huge'" in first
    assert log and all(line.startswith("  ") for line in log), result.stderr  # QEMU's own words, indented
    assert cli.ok("domstate", "huge") == "shut off\n"
