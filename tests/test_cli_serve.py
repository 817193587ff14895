"""``avirt serve``, run for real: the foreground controller a service manager keeps, real QEMU guests.

Each test starts ``avirt serve`` as a subprocess and waits for its "serving" line on standard error
(never a sleep). While it runs it holds the state directory's lock, so every other ``avirt`` command that
works meanwhile works as its client, through ``<state_dir>/avirt.sock``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.test_cli import CLI, Lines, define_and_start, one_line_error, qemu_pid, table_rows
from tests.xmls import XMLFactory


def start_serving(cli: CLI, processes: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], Lines]:
    serve = cli.spawn("serve")
    processes.append(serve)
    assert serve.stderr is not None
    err = Lines(serve.stderr)
    err.expect(lambda line: line.startswith("avirt: serving ") and str(cli.state_dir) in line)
    return serve, err


def test_serve_serves_other_commands_and_leaves_guests_running_on_sigterm(
        cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path,
        processes: list[subprocess.Popen[str]]) -> None:
    define_and_start(cli, tmp_path, xml, "web1")
    pid = qemu_pid(state_dir, "web1")
    serve, err = start_serving(cli, processes)
    assert (state_dir / "avirt.sock").exists()

    # serve holds the lock throughout, so these commands are its clients; a client's event stream sees
    # what another client does through it.
    event = cli.spawn("event", "--loop", "--json", "--event", "lifecycle")
    processes.append(event)
    assert event.stdout is not None and event.stderr is not None
    out = Lines(event.stdout)
    Lines(event.stderr).expect(lambda line: "watching events" in line)
    assert ["web1", "running"] in [row[1:] for row in table_rows(cli.ok("list"))]
    cli.ok("suspend", "web1")
    assert json.loads(out.expect(lambda line: '"suspended"' in line))["domain"] == "web1"
    event.send_signal(signal.SIGINT)
    assert event.wait(timeout=30) == 0

    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0
    assert all("Traceback" not in line and "error" not in line for line in err.rest())
    os.kill(pid, 0)  # the same QEMU still runs, still paused for the next controller
    assert cli.ok("domstate", "web1") == "paused\n"
    assert qemu_pid(state_dir, "web1") == pid


def test_a_second_serve_fails_while_one_serves(cli: CLI, processes: list[subprocess.Popen[str]]) -> None:
    serve, _ = start_serving(cli, processes)
    line = one_line_error(cli("serve"))
    assert "another avirt program already holds the state directory" in line, line
    serve.send_signal(signal.SIGINT)  # Ctrl-C is a normal end too
    assert serve.wait(timeout=30) == 0


def test_serve_needs_a_local_state_directory(cli: CLI) -> None:
    line = cli.fails("-c", "test:///default", "serve")
    assert line.startswith("error: serve controls a local state directory"), line

