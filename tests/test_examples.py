"""The examples, run for real against real QEMU, as a reader of the docs would run them.

Like ``avirt event``, each example is the controller of its state directory while it runs, so the events
it reports are caused from outside avirt: guests are started (with the ``avirt`` CLI) before the example
runs, and one QEMU is then killed with SIGKILL. Output is read against deadlines (see tests/test_cli.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.images import reads, write
from tests.sshd import SSHServer
from tests.test_cli import CLI, Lines, clean_env, define_and_start, kill_qemu, write_xml
from tests.test_pytest_plugin import plugin_args
from tests.xmls import XMLFactory

#: ``run_example(script, *args)`` -> (the process, its stdout lines, its stderr lines)
RunExample = Callable[..., tuple[subprocess.Popen[str], Lines, Lines]]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def cli(state_dir: Path) -> CLI:
    return CLI(state_dir)


@pytest.fixture
def run_example(state_dir: Path) -> Iterator[RunExample]:
    """``run_example("event_logger.py", "--json")``: the example as a background process on state_dir."""
    started: list[subprocess.Popen[str]] = []

    def run(script: str, *args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
        process = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--state-dir", str(state_dir),
                                    *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   bufsize=1, env=clean_env())
        started.append(process)
        assert process.stdout is not None and process.stderr is not None
        return process, Lines(process.stdout), Lines(process.stderr)

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_event_logger_json_lines(cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path,
                                 run_example: RunExample) -> None:
    define_and_start(cli, tmp_path, xml, "web1")
    logger, out, err = run_example("event_logger.py", "--json", "--seconds", "60")
    err.expect(lambda line: line.startswith("logging events of qemu:///session"))

    kill_qemu(state_dir, "web1")
    record = json.loads(out.expect(lambda line: '"stopped"' in line))
    assert {k: record[k] for k in ("kind", "domain", "type", "detail")} == {
        "kind": "lifecycle", "domain": "web1", "type": "stopped", "detail": "failed"}
    assert {"uuid", "timestamp", "seq"} <= set(record)

    logger.send_signal(signal.SIGINT)
    assert logger.wait(timeout=30) == 0
    assert not any("Traceback" in line for line in err.rest())


def test_event_logger_text_lines(cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path,
                                 run_example: RunExample) -> None:
    define_and_start(cli, tmp_path, xml, "web1")
    logger, out, err = run_example("event_logger.py")
    err.expect(lambda line: line.startswith("logging events"))
    kill_qemu(state_dir, "web1")
    assert out.expect(lambda line: "web1" in line).endswith(" web1 lifecycle: stopped (failed)")
    logger.send_signal(signal.SIGINT)
    assert logger.wait(timeout=30) == 0


def test_event_logger_stops_after_seconds(run_example: RunExample) -> None:
    started = time.monotonic()
    logger, out, _ = run_example("event_logger.py", "--seconds", "1")
    assert logger.wait(timeout=60) == 0
    assert time.monotonic() - started >= 1
    assert out.rest() == []


def test_fleet_watcher_follows_every_domain_with_one_stream(
        cli: CLI, xml: XMLFactory, tmp_path: Path, state_dir: Path,
        run_example: RunExample) -> None:
    define_and_start(cli, tmp_path, xml, "web1", "web2")
    cli.ok("define", str(write_xml(tmp_path, xml, "web3")))
    watcher, out, err = run_example("fleet_watcher.py", "--seconds", "60")

    out.expect(lambda line: line == "== 2 running, 1 shutoff")
    assert [line.split() for line in out.seen[:-1]] == [
        ["web1", "running"], ["web2", "running"], ["web3", "shutoff"]]
    err.expect(lambda line: line.startswith("watching 3 domains"))

    kill_qemu(state_dir, "web2")
    change = out.expect(lambda line: "web2" in line)
    assert "web2: running -> shutoff (failed)" in change
    assert change.endswith("[1 running, 2 shutoff]")

    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=30) == 0
    assert out.rest()[-1] == "== 1 running, 2 shutoff"


def test_fleet_watcher_follows_two_hosts_with_one_stream(
        cli: CLI, xml: XMLFactory, tmp_path: Path, run_example: RunExample, sshd: SSHServer) -> None:
    define_and_start(cli, tmp_path, xml, "web1")
    remote_dir = tmp_path / "remote-state"
    remote = sshd.uri(remote_dir)
    remote_cli = CLI(remote_dir)
    remote_cli.ok("-c", remote, "define", str(write_xml(tmp_path, xml, "db1")))
    remote_cli.ok("-c", remote, "start", "--paused", "db1")
    watcher, out, _ = run_example("fleet_watcher.py", "-c", "qemu:///session", "-c", remote,
                                    "--seconds", "60")
    out.expect(lambda line: line == "== 1 paused, 1 running")
    host = f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert [line.split() for line in out.seen[:-1]] == [
        ["localhost/web1", "running"], [f"{host}/db1", "paused"]]

    kill_qemu(remote_dir, "db1")  # the watcher is the remote state directory's controller now
    change = out.expect(lambda line: "db1" in line)
    assert f"{host}/db1: paused -> shutoff (failed)" in change
    assert change.endswith("[1 running, 1 shutoff]")
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=30) == 0


def test_fleet_watcher_stops_after_seconds(cli: CLI, xml: XMLFactory, tmp_path: Path,
                                           run_example: RunExample) -> None:
    cli.ok("define", str(write_xml(tmp_path, xml, "web1")))
    watcher, out, _ = run_example("fleet_watcher.py", "--seconds", "0.5")
    assert watcher.wait(timeout=60) == 0
    assert out.rest() == ["web1   shutoff", "== 1 shutoff", "== 1 shutoff"]


@pytest.mark.parametrize(("percent", "direction"), [(10, "commit"), (90, "pull")])
def test_image_advisor_applies_its_advice(tmp_path: Path, percent: int, direction: str) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "20M"], check=True)
    write(base, 0x11, 0, 20)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
                   check=True)
    write(top, 0x44, 0, 20 * percent // 100)
    view = ((0x44, 0, 20 * percent // 100), (0x11, 20 * percent // 100, 20 - 20 * percent // 100))
    result = subprocess.run([sys.executable, str(EXAMPLES / "image_advisor.py"), str(top), "--apply"],
                            capture_output=True, text=True, timeout=120, env=clean_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"[0] {top}  qcow2  {20 * percent // 100:.1f} MiB of 20 MiB")
    assert lines[2].startswith(f"advice: {direction}: the overlay is {percent}% allocated")
    assert f"{direction}: completed" in lines
    merged = base if direction == "commit" else top
    assert reads(merged, view, alone=True) == []
    assert reads(top, view) == []
    expected = f"chain now: {top} -> {base}" if direction == "commit" else f"chain now: {top}"
    assert lines[-1] == expected


@pytest.mark.parametrize("runner", ["script", "anyio", "asyncio"])
def test_testing_your_code_runs_its_checks_on_the_test_driver(runner: str) -> None:
    script = str(EXAMPLES / "testing_your_code.py")
    command = [sys.executable, script]
    env = clean_env()
    if runner != "script":  # as pytest tests, marked for anyio's plugin or for pytest-asyncio
        command[1:1] = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args()]
        env["AVIRT_EXAMPLE_MARK"] = runner
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=EXAMPLES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert (last == "4 checks passed" if runner == "script" else last.startswith("4 passed")), result.stdout
