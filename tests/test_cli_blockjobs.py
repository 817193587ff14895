"""``avirt blockcommit/blockpull/blockcopy/blockjob/snapshot-create-as/domblkchain/demo``, run for real.

The installed executable as a subprocess, one state directory per test, a firmware-only guest on the
four-layer chain of :mod:`tests.images` (each layer's own pattern), and the data read back byte by byte
once the guest is destroyed (QEMU may hold metadata it has not written yet while it runs).

Every command is its own controller: a job started by one is found, pivoted or aborted by the next. Jobs
that must still be running when the next command looks are throttled to a few bytes per second, so they
cannot finish first; nothing waits on a clock.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from tests.images import GUEST_VIEW, Chain, backing_chain, make_chain, reads
from tests.test_cli import CLI, Lines, avirt_executable, clean_env, table_rows
from tests.xmls import XMLFactory

COMMANDS = ["blockcommit", "blockpull", "blockcopy", "blockjob", "snapshot-create-as", "domblkchain", "demo"]
PROGRESS = re.compile(r"^(Block commit|Block pull|Block copy): \[ *(\d+) %\]$")


def guest(cli: CLI, xml: XMLFactory, tmp_path: Path, name: str, *, start: bool = True) -> Chain:
    """A guest on a fresh four-layer chain (vda = the active image), started unless asked not to."""
    chain = make_chain(tmp_path)
    cli.ok("define", "-", input=xml(name, disks=[("vda", str(chain.active), "qcow2")]))
    if start:
        cli.ok("start", name)
    return chain


def info(text: str) -> dict[str, str]:
    """``blockjob --info`` as a dict: ``Key: value`` lines."""
    return {key: value.strip() for key, value in (line.split(":", 1) for line in text.splitlines())}


def chain_paths(cli: CLI, name: str) -> list[str]:
    """vda's chain, top first, as the live XML's ``<backingStore>`` elements say."""
    disk = etree.fromstring(cli.ok("dumpxml", name).encode()).find("devices/disk")
    paths = []
    while disk is not None and (source := disk.find("source")) is not None:
        paths.append(source.get("file", ""))
        disk = disk.find("backingStore")
    return paths


def full_chain(chain: Chain) -> list[str]:
    return [str(chain.active), str(chain.snap2), str(chain.snap1), str(chain.base)]


# -- blockcommit -----------------------------------------------------------------------------------------


def test_intermediate_commit_waits_until_done(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "ic")
    assert table_rows(cli.ok("domblkchain", "ic", "vda")) == [
        [f"vda[{i}]", "qcow2", "16.0 MiB", "2.0 MiB", path] for i, path in enumerate(full_chain(chain))]
    # snap2 into snap1: the active image then backs onto snap1; snap2 is deleted.
    out = cli.ok("blockcommit", "ic", "vda", "--top", "vda[1]", "--shallow", "--delete", "--wait")
    assert out == "Commit complete\n"
    assert backing_chain(chain.active) == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert not chain.snap2.exists()
    rows = table_rows(cli.ok("domblkchain", "ic", "vda"))
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("vda[0]", "qcow2", str(chain.active)), ("vda[1]", "qcow2", str(chain.snap1)),
        ("vda[2]", "qcow2", str(chain.base))]
    assert cli.ok("blockjob", "ic", "vda") == "No current block job for vda\n"
    cli.ok("destroy", "ic")
    assert reads(chain.active, GUEST_VIEW) == []
    cli.ok("start", "ic")  # the definition names images that exist
    cli.ok("destroy", "ic")


def test_keep_relative_commit_keeps_the_domain_startable(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "kr")
    assert cli.ok("blockcommit", "kr", "vda", "--top", "vda[1]", "--shallow", "--keep-relative",
                  "--wait") == "Commit complete\n"
    header = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(chain.active)],
                                       check=True, capture_output=True, text=True).stdout)
    assert header["backing-filename"] == "snap1.qcow2"
    assert f"<source file=\"{chain.active}\"/>" in cli.ok("dumpxml", "kr", "--inactive")
    assert chain_paths(cli, "kr") == [str(chain.active), str(chain.snap1), str(chain.base)]
    cli.ok("destroy", "kr")
    cli.ok("start", "kr")
    cli.ok("destroy", "kr")


def test_active_commit_with_pivot(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "ac")
    assert cli.ok("blockcommit", "ac", "vda", "--wait", "--pivot") == "Successfully pivoted\n"
    assert chain_paths(cli, "ac") == [str(chain.base)]
    assert f"<source file=\"{chain.base}\"/>" in cli.ok("dumpxml", "ac", "--inactive")
    assert cli.ok("blockjob", "ac", "vda") == "No current block job for vda\n"
    cli.ok("destroy", "ac")
    assert reads(chain.base, GUEST_VIEW, alone=True) == []


def test_active_commit_left_ready_is_pivoted_by_the_next_command(cli: CLI, xml: XMLFactory,
                                                                 tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "ar")
    # --active is virsh's spelling; avirt sees an active commit by itself and accepts it.
    assert cli.ok("blockcommit", "ar", "vda", "--active", "--wait") == "Now in synchronized phase\n"
    shown = info(cli.ok("blockjob", "ar", "vda", "--info"))
    assert (shown["Type"], shown["Ready"], shown["Bandwidth"]) == ("Active block commit", "yes", "unlimited")
    assert shown["Job"].startswith("active-commit-vda")
    assert re.fullmatch(r"\[100 %\] (\d+) of \1 bytes", shown["Progress"]), shown
    assert chain_paths(cli, "ar") == full_chain(chain)  # ready: nothing switched yet
    # The commit keeps the middle layers locked: domblkchain shows the chain without their sizes.
    result = cli("domblkchain", "ar", "vda")
    assert result.returncode == 0, result.stderr
    assert [row[-1] for row in table_rows(result.stdout)] == full_chain(chain)
    assert cli.ok("blockjob", "ar", "vda", "--pivot") == "Successfully pivoted\n"
    assert chain_paths(cli, "ar") == [str(chain.base)]
    cli.ok("destroy", "ar")
    assert reads(chain.base, GUEST_VIEW, alone=True) == []


def test_active_commit_started_without_wait_then_pivoted(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "an")
    assert cli.ok("blockcommit", "an", "vda") == "Active block commit started\n"
    assert info(cli.ok("blockjob", "an", str(chain.active)))["Type"] == "Active block commit"  # DISK by path
    # --pivot waits for the job to be ready, then pivots.
    assert cli.ok("blockjob", "an", "vda", "--pivot") == "Successfully pivoted\n"
    cli.ok("destroy", "an")
    assert reads(chain.base, GUEST_VIEW, alone=True) == []


def test_job_started_without_wait_is_shown_throttled_and_aborted(cli: CLI, xml: XMLFactory,
                                                                 tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "nw")
    # snap1 into base, at 1 byte/s: still running for as long as this test looks at it.
    out = cli.ok("blockcommit", "nw", "vda", "--top", "vda[2]", "--bandwidth", "1")
    assert out == "Block commit started\n"
    shown = info(cli.ok("blockjob", "nw", "vda"))
    assert (shown["Type"], shown["Ready"]) == ("Block commit", "no")
    assert shown["Bandwidth"] == "1 bytes/s (1 B/s)"
    assert re.fullmatch(r"\[ *\d+ %\] \d+ of \d+ bytes", shown["Progress"]), shown
    assert cli.ok("blockjob", "nw", "vda", "--bandwidth", "2K") == (
        "Bandwidth of the block commit on vda set to 2048 bytes/s (2.0 KiB/s)\n")
    assert info(cli.ok("blockjob", "nw", "vda"))["Bandwidth"] == "2048 bytes/s (2.0 KiB/s)"
    assert "already has a block job" in cli.fails("blockpull", "nw", "vda")
    assert cli.ok("blockjob", "nw", "vda", "--abort") == "Block commit on vda aborted\n"
    assert cli.ok("blockjob", "nw", "vda") == "No current block job for vda\n"
    assert chain_paths(cli, "nw") == full_chain(chain)
    cli.ok("destroy", "nw")
    assert reads(chain.active, GUEST_VIEW) == []


def test_job_that_ends_unwatched_is_settled_by_the_next_command(cli: CLI, xml: XMLFactory,
                                                                tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "uw")
    assert cli.ok("blockcommit", "uw", "vda", "--top", "vda[1]") == "Block commit started\n"
    # Whether it ended before that command closed or after, this one reports no job and the new chain.
    lines = cli.ok("blockjob", "uw", "vda").splitlines()
    assert lines[0] == "No current block job for vda"
    assert all("completed" in line for line in lines[1:]), lines
    assert backing_chain(chain.active) == [str(chain.active), str(chain.base)]
    assert str(chain.snap1) not in cli.ok("dumpxml", "uw")
    cli.ok("destroy", "uw")
    assert reads(chain.active, GUEST_VIEW) == []


def test_ctrl_c_while_waiting_aborts_the_job(cli: CLI, xml: XMLFactory, tmp_path: Path,
                                             processes: list[subprocess.Popen[str]]) -> None:
    chain = guest(cli, xml, tmp_path, "cc")
    waiting = cli.spawn("blockcommit", "cc", "vda", "--top", "vda[1]", "--bandwidth", "1", "--wait",
                        "--verbose")
    processes.append(waiting)
    assert waiting.stdout is not None and waiting.stderr is not None
    out, err = Lines(waiting.stdout), Lines(waiting.stderr)
    out.expect(lambda line: line == "Block commit: [  0 %]")
    waiting.send_signal(signal.SIGINT)
    assert waiting.wait(timeout=30) == 130
    assert err.rest() == ["avirt: interrupted: block commit on vda aborted; the disk is as it was"]
    assert cli.ok("blockjob", "cc", "vda") == "No current block job for vda\n"
    assert chain_paths(cli, "cc") == full_chain(chain)
    cli.ok("destroy", "cc")
    assert reads(chain.active, GUEST_VIEW) == []


def test_a_shared_base_needs_allow_shared_base(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "owner", start=False)
    other = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(chain.base),
                    str(other)], check=True)
    cli.ok("define", "-", input=xml("reader", disks=[("vda", str(other), "qcow2")]))
    error = cli.fails("blockcommit", "owner", "vda", "--wait")
    assert f"{chain.base} is also in the backing chain of reader" in error
    assert cli.ok("blockcommit", "owner", "vda", "--wait", "--allow-shared-base") == "Commit complete\n"
    assert reads(chain.base, GUEST_VIEW, alone=True) == []


# -- progress --------------------------------------------------------------------------------------------


def test_verbose_prints_progress_lines_when_piped(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    guest(cli, xml, tmp_path, "vb")
    # 2 MiB/s over a few MiB: long enough for progress() to sample it on the way.
    lines = cli.ok("blockcommit", "vb", "vda", "--top", "vda[1]", "--bandwidth", "2M",
                   "--verbose").splitlines()
    assert lines[-1] == "Commit complete"
    matches = [PROGRESS.match(line) for line in lines[:-1]]
    assert all(matches), lines
    percents = [int(m.group(2)) for m in matches if m]
    assert percents[0] == 0 and percents[-1] == 100
    assert any(0 < p < 100 for p in percents), lines
    assert len(set(percents)) == len(percents)  # one line per percentage, not per sample
    cli.ok("destroy", "vb")


def test_verbose_draws_a_bar_on_a_terminal(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "tty")
    primary, secondary = pty.openpty()
    process = subprocess.Popen(cli.argv("blockpull", "tty", "vda", "--verbose", "--bandwidth", "4M"),
                               stdout=secondary, stderr=subprocess.PIPE, env=clean_env())
    os.close(secondary)
    output = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the terminal's other side has closed
            break
        if not data:
            break
        output += data
    os.close(primary)
    assert process.wait(timeout=60) == 0
    text = output.decode()
    assert "\r" in text and "Block pull: [" in text and "#" * 30 + "] 100 %" in text, text
    assert text.replace("\r\n", "\n").endswith("Pull complete\n"), text
    cli.ok("destroy", "tty")
    assert reads(chain.active, GUEST_VIEW, alone=True) == []


# -- blockpull, blockcopy, snapshot-create-as -------------------------------------------------------------


def test_blockpull_waits_until_done(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "pl")
    assert cli.ok("blockpull", "pl", "vda", "--base", "vda[2]", "--wait") == "Pull complete\n"
    assert chain_paths(cli, "pl") == [str(chain.active), str(chain.snap1), str(chain.base)]
    assert cli.ok("blockpull", "pl", "vda", "--wait") == "Pull complete\n"
    assert chain_paths(cli, "pl") == [str(chain.active)]
    cli.ok("destroy", "pl")
    assert reads(chain.active, GUEST_VIEW, alone=True) == []


def test_blockcopy_with_pivot(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "cp")
    dest = tmp_path / "copy.qcow2"
    assert cli.ok("blockcopy", "cp", "vda", str(dest), "--wait", "--pivot") == "Successfully pivoted\n"
    assert chain_paths(cli, "cp") == [str(dest)]
    assert f"<source file=\"{dest}\"/>" in cli.ok("dumpxml", "cp", "--inactive")
    cli.ok("destroy", "cp")
    assert reads(dest, GUEST_VIEW, alone=True) == []
    assert reads(chain.active, GUEST_VIEW) == []  # the original is untouched


def test_blockcopy_left_mirroring_then_aborted(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "cm")
    dest = tmp_path / "top.qcow2"
    assert cli.ok("blockcopy", "cm", "vda", str(dest), "--shallow", "--wait") == "Now in mirroring phase\n"
    assert info(cli.ok("blockjob", "cm", "vda"))["Type"] == "Block copy"
    assert cli.fails("blockcopy", "cm", "vda", str(dest)) == "error: disk vda of 'cm' already has a block job"
    assert cli.ok("blockjob", "cm", "vda", "--abort") == "Block copy on vda aborted\n"
    assert chain_paths(cli, "cm") == full_chain(chain)
    cli.ok("destroy", "cm")
    assert reads(chain.active, GUEST_VIEW) == []


def test_snapshot_create_as(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "sn")
    overlay = tmp_path / "active.before-upgrade.qcow2"
    lines = cli.ok("snapshot-create-as", "sn", "before-upgrade", "--disk-only")
    assert lines.splitlines()[0] == "Domain snapshot before-upgrade created"
    assert table_rows(lines) == [["vda", str(overlay)]]
    assert chain_paths(cli, "sn") == [str(overlay), *full_chain(chain)]
    assert table_rows(cli.ok("domblklist", "sn")) == [["vda", str(overlay)]]
    second = table_rows(cli.ok("snapshot-create-as", "sn", "s2", "--disk-only", "--disks", "vda"))
    assert second == [["vda", str(tmp_path / "active.before-upgrade.s2.qcow2")]]
    cli.ok("destroy", "sn")
    assert reads(overlay, GUEST_VIEW) == []


# -- errors, help, demo ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["blockcommit", "D", "vdz"], ["blockpull", "D", "vdz"], ["blockcopy", "D", "vdz", "/tmp/x.qcow2"],
    ["blockjob", "D", "vdz"], ["blockjob", "D", "vdz", "--abort"], ["domblkchain", "D", "vdz"],
    ["snapshot-create-as", "D", "s1", "--disk-only", "--disks", "vda,vdz"],
    ["blockjob", "D", "/nowhere/disk.qcow2"],
])
def test_no_such_disk(cli: CLI, xml: XMLFactory, tmp_path: Path, argv: list[str]) -> None:
    guest(cli, xml, tmp_path, "D", start=False)
    missing = argv[2] if argv[0] != "snapshot-create-as" else "vdz"
    assert cli.fails(*argv) == f"error: domain 'D' has no disk {missing}"


@pytest.mark.parametrize("command", ["blockcommit", "blockpull", "blockjob", "domblkchain"])
def test_no_such_domain(cli: CLI, command: str) -> None:
    assert cli.fails(command, "nosuch", "vda") == "error: no domain with name or uuid 'nosuch'"


def test_refused_requests_are_one_line_errors(cli: CLI, xml: XMLFactory, tmp_path: Path) -> None:
    chain = guest(cli, xml, tmp_path, "er")
    assert cli.fails("blockcommit", "er", "vda", "--top", "vda[3]") == (
        f"error: {chain.base} has no backing file to commit into")
    assert "vda[9]" in cli.fails("blockpull", "er", "vda", "--base", "vda[9]")
    assert cli.fails("blockjob", "er", "vda", "--abort") == "error: no block job on disk vda of domain 'er'"
    assert cli.fails("blockjob", "er", "vda", "--pivot") == "error: no block job on disk vda of domain 'er'"
    assert "does not exist" in cli.fails("blockcopy", "er", "vda", str(tmp_path / "none.qcow2"),
                                         "--reuse-external")
    elsewhere = tmp_path / "elsewhere.qcow2"
    assert cli.fails("blockcommit", "er", "vda", "--base", str(elsewhere), "--wait") == (
        f"error: {elsewhere} is not in the backing chain of vda")
    assert chain_paths(cli, "er") == full_chain(chain)
    cli.ok("destroy", "er")


@pytest.mark.parametrize("argv", [
    ["blockcommit", "D", "vda", "--bandwidth", "fast"], ["blockcommit", "D", "vda", "--bandwidth", "-1"],
    ["blockjob", "D", "vda", "--abort", "--pivot"], ["snapshot-create-as", "D", "s1"],
    ["blockcopy", "D", "vda", "x.img", "--format", "vmdk"], ["blockpull", "D"],
])
def test_usage_errors_exit_2(cli: CLI, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.returncode == 2, result
    assert "usage: avirt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    result = subprocess.run([avirt_executable(), command, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: avirt {command}")
    assert "example" in result.stdout


def test_help_lists_the_block_job_commands() -> None:
    result = subprocess.run([avirt_executable(), "--help"], capture_output=True, text=True, timeout=60)
    section = result.stdout.split("block jobs and snapshots:\n", 1)[1].split("\n\n", 1)[0]
    assert set(COMMANDS[:-1]) <= {line.split()[0] for line in section.splitlines()}


def test_demo_runs_to_the_end(cli: CLI) -> None:
    out = cli.ok("demo")
    assert "every byte still there: True" in out
    assert out.rstrip().endswith("demo finished")


def test_demo_outside_a_source_checkout_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    from avirt.cli import main
    from avirt.cli.commands import demo

    monkeypatch.setattr(demo, "demo_path", lambda: tmp_path / "examples" / "demo.py")
    assert main(["demo"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: the demo ships with avirt's source checkout (examples/demo.py), and "
                            f"there is none beside this installation: {tmp_path}/examples/demo.py does not "
                            "exist\n")
