"""Every bad command line an error message and an exit status: generated ``avirt`` argument vectors.

The command runs in-process through :func:`avirt.cli.main`, as the ``avirt`` executable does, on
``test:///default`` (every command, a fresh world each run) and on ``qemu:///session`` with a private
state directory (the commands that start no QEMU). The contract: exit status 0, 1 (with one ``error:``
line) or 2 (argparse's usage error), never a traceback, never a hang, and a run that fails leaves the
state directory as it was. ``event`` and ``demo`` are left out: their normal end is Ctrl-C or a timer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from avirt.cli import main
from avirt.cli.app import build_parser
from avirt.cli.commands import discover
from tests.fuzzing import FUZZ, FUZZ_MORE, NASTY, SEEDS, mutated_definitions, nasty_text, picture

#: Longer than any command here takes; a run still going after this is a hang.
RUN_TIMEOUT = 30.0

#: Values for each kind of argument (by its metavar), and for options with a value. Bandwidths stay
#: large or invalid: a job throttled to a few bytes per second that is waited for is a long run, not a hang.
VALUES = {
    "DOM": ["test", "fuzz-seed", "web1", "00000000-0000-0000-0000-000000000000"],
    "DISK": ["vda", "vdb", "sda", "vda[1]"],
    "TARGET": ["vda", "vdb", "sda", "hdc"],
    "SOURCE": ["/var/lib/avirt/images/test.qcow2", "/tmp/x.iso", "", "a\x00b"],
    "DOMAIN": ["test", "fuzz-seed", "nosuch"],
    "URI": ["urn:x", "http://example.org/app", "http://libosinfo.org/xmlns/libvirt/domain/1.0"],
    "NAME": ["snap1", "..", "a/b"],
    "BPS": ["0", "1G", "64M", "9" * 30, "9" * 5000, "-1", "1e3", "1X", "", "\u0661K"],
    "B": ["vda[1]", "vda[3]", "vda[9]", "/var/lib/avirt/images/test-base.qcow2"],
    "T": ["vda[1]", "vda[2]", "vda[0]", "vdb[1]"],
    "DISKS": ["vda", "vda,vdb", ",", ""],
    "XML": ["<app/>", "<a:app xmlns:a='urn:x'/>", "<", ""],
    "PREFIX": ["app", "1a", "xml", ""],
    "SECONDS": ["5", "0", "-1", "nan", "inf", "x"],
    "{qcow2,raw}": ["qcow2", "raw", "vmdk"],
}
#: Commands that start no QEMU process: the ones run on qemu:///session.
OFFLINE = ["define", "undefine", "list", "dominfo", "domstate", "dumpxml", "domblklist", "domblkchain",
           "metadata", "blockcommit", "blockpull", "snapshot-create-as", "blockjob", "shutdown", "destroy",
           "suspend", "resume"]
EVERY = [*OFFLINE, "start", "reboot", "reset", "blockcopy", "domstats", "domblkstat", "attach-device",
         "detach-device", "attach-disk", "detach-disk", "change-media"]


@dataclass
class Files:
    """Files a command line may name: good and bad definitions, and things that are not files."""

    seed: Path
    not_utf8: Path
    directory: Path
    missing: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("cli-files")
    (root / "seed.xml").write_text(SEEDS[-1])
    (root / "latin1.xml").write_bytes(SEEDS[-1].replace("fuzz-seed", "fuzz-s\xe9ed").encode("latin-1"))
    return Files(root / "seed.xml", root / "latin1.xml", root, root / "missing.xml")


@pytest.fixture(scope="module")
def cli_state(tmp_path_factory: pytest.TempPathFactory, files: Files) -> Path:
    """A state directory with the seed domain defined (so that commands find a domain)."""
    state = tmp_path_factory.mktemp("cli") / "state"
    run = run_cli(["-c", "qemu:///session", "--state-dir", str(state), "define", str(files.seed)])
    assert run.status == 0, run.stderr
    return state


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


def run_cli(argv: list[str]) -> Run:
    """``avirt ARGV`` in-process, in a thread so that a hang fails the test instead of stalling it."""
    out, err = io.StringIO(), io.StringIO()
    result: list[int | BaseException] = []

    def target() -> None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result.append(main(argv))
            except SystemExit as e:  # argparse: --help, --version, usage errors
                result.append(e.code if isinstance(e.code, int) else 2)
            except BaseException as e:  # a bug; re-raised below with the command line
                result.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RUN_TIMEOUT)
    assert not thread.is_alive(), f"avirt {argv!r} still running after {RUN_TIMEOUT} s"
    if isinstance(result[0], BaseException):
        raise AssertionError(f"avirt {argv!r} raised {result[0]!r}") from result[0]
    return Run(result[0], out.getvalue(), err.getvalue())


def _arguments() -> dict[str, tuple[list[tuple[str, str]], list[tuple[str, str | None]]]]:
    """Each command's positionals (dest, metavar) and options (flag, metavar or None for a switch)."""
    subparsers = next(a for a in build_parser(discover())._actions
                      if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, parser in subparsers.choices.items():
        positionals, options = [], []
        for action in parser._actions:
            metavar = str(action.metavar or action.dest)
            if "--help" in action.option_strings:
                continue  # tested once is enough: it prints and exits before anything else
            if not action.option_strings:
                positionals.append((action.dest, metavar))
            elif action.nargs == 0:
                options.append((action.option_strings[-1], None))
            else:
                options.append((action.option_strings[-1], metavar))
        found[name] = (positionals, options)
    return found


ARGUMENTS = _arguments()


@st.composite
def command_lines(draw: st.DrawFn, commands: list[str], files: Files) -> list[str]:
    """A command with its positionals and some of its options, well-formed or nearly so: then a few
    tokens are replaced, dropped or added, so most runs get past argparse into the command."""
    paths = [str(files.seed), str(files.not_utf8), str(files.directory), str(files.missing), "a\x00b.xml",
             "/", "-"]
    hostile = st.one_of(st.sampled_from(NASTY), nasty_text())

    def value(metavar: str) -> str:
        pool = paths if metavar in ("FILE", "DEST") else VALUES.get(metavar, [])
        return draw(st.sampled_from(pool)) if pool and draw(st.integers(0, 4)) else draw(hostile)

    name = draw(st.sampled_from(commands))
    positionals, options = ARGUMENTS[name]
    argv = [name, *(value(metavar) for _, metavar in positionals)]
    chosen = draw(st.lists(st.sampled_from(options), max_size=3, unique=True)) if options else []
    for flag, metavar in chosen:
        argv += [flag] if metavar is None else [flag, value(metavar)]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        at = draw(st.integers(1, len(argv)))
        edit = draw(st.sampled_from(["replace", "drop", "add"]))
        if edit == "add" or at == len(argv):
            argv.insert(at, draw(hostile))
        elif edit == "drop":
            del argv[at]
        else:
            argv[at] = draw(hostile)
    return argv


def check(run: Run, argv: list[str]) -> None:
    assert run.status in (0, 1, 2), (argv, run)
    assert "Traceback" not in run.stderr, (argv, run.stderr)
    if run.status == 1:
        assert run.stderr.startswith("error: ") or "avirt: error:" in run.stderr, (argv, run.stderr)


@FUZZ_MORE
@given(data=st.data())
def test_command_lines_on_the_test_driver(files: Files, data: st.DataObject) -> None:
    argv = data.draw(command_lines(EVERY, files))
    check(run_cli(["-c", "test:///default", *argv]), argv)


@FUZZ_MORE
@given(data=st.data())
def test_command_lines_on_a_state_directory(files: Files, cli_state: Path, data: st.DataObject) -> None:
    argv = data.draw(command_lines(OFFLINE, files))
    before = picture(cli_state)
    run = run_cli(["-c", "qemu:///session", "--state-dir", str(cli_state), *argv])
    check(run, argv)
    if run.status != 0:
        assert picture(cli_state) == before, f"avirt {argv!r} failed ({run.stderr.strip()}) but wrote"


@FUZZ
@given(mutated_definitions())
def test_define_mutated_files(tmp_path_factory: pytest.TempPathFactory, cli_state: Path, xml: str) -> None:
    path = tmp_path_factory.mktemp("def") / "domain.xml"
    path.write_bytes(xml.encode("utf-8", "surrogateescape"))
    before = picture(cli_state)
    run = run_cli(["-c", "qemu:///session", "--state-dir", str(cli_state), "define", str(path)])
    check(run, ["define", str(path)])
    if run.status != 0:
        assert picture(cli_state) == before


@FUZZ
@given(st.sampled_from(["-c", "--connect", "--state-dir"]), st.one_of(st.sampled_from(NASTY), nasty_text()))
@example("-c", "qemu://[::1/session")
@example("--state-dir", "a\x00b")
def test_global_options(tmp_path_factory: pytest.TempPathFactory, option: str, value: str) -> None:
    if "ssh" in value or "tcp" in value:
        return  # no host but this one is ever contacted
    where = tmp_path_factory.mktemp("global")
    if option == "--state-dir":
        # Kept below a private directory, whatever the value: "/" or ".." must not land on this machine's
        # own directories, and the nested levels hold the ".." of NASTY.
        value = os.path.join(where, "a", "b", "c", value.lstrip("/") or ".")
        run = run_cli([option, value, "list"])
    else:
        run = run_cli([option, value, "--state-dir", str(where / "state"), "list"])
    check(run, [option, value])


# -- regressions ---------------------------------------------------------------------------------------


def test_define_names_a_file_that_is_not_utf8(files: Files) -> None:
    run = run_cli(["-c", "test:///default", "define", str(files.not_utf8)])
    assert (run.status, run.stdout) == (1, "")
    assert run.stderr.startswith(f"error: {files.not_utf8}: not UTF-8 text")


def test_a_nul_byte_in_a_file_name_is_an_error_line(files: Files) -> None:
    run = run_cli(["-c", "test:///default", "define", "a\x00b.xml"])
    assert (run.status, run.stderr) == (1, "error: 'a\\x00b.xml': a file name cannot hold a NUL byte\n")


def test_repeated_runs_in_one_process_log_each_warning_once() -> None:
    import logging

    before = len(logging.getLogger().handlers)
    for _ in range(3):
        assert run_cli(["-c", "test:///default", "list"]).status == 0
    assert len(logging.getLogger().handlers) <= before + 1

