"""``avirt metadata``, run for real: the installed executable as a subprocess, real QEMU.

Every command is its own controller, so each read below is also a read by a new controller of what the
one before wrote (domain.xml, and live.xml while the guest runs).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

import avirt
from tests.test_cli import CLI, avirt_executable, clean_env
from tests.xmls import XMLFactory

APP = "http://example.org/app/1"


def test_help() -> None:
    result = subprocess.run([avirt_executable(), "metadata", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: avirt metadata")
    assert "example" in result.stdout
    listing = subprocess.run([avirt_executable(), "--help"], capture_output=True, text=True, timeout=60)
    section = listing.stdout.split("domain management:\n", 1)[1].split("\n\n", 1)[0]
    assert "metadata" in {line.split()[0] for line in section.splitlines()}


def test_set_show_remove_on_a_shut_off_domain(cli: CLI, xml: XMLFactory) -> None:
    cli.ok("define", "-", input=xml("web1"))
    assert cli.fails("metadata", "web1", APP) == (
        f"error: domain 'web1' has no metadata element in namespace '{APP}'")
    assert cli.ok("metadata", "web1", APP, "--set", "<app><owner>ops</owner></app>", "--key", "app") == (
        "Metadata modified\n")
    assert cli.ok("metadata", "web1", APP) == "<app><owner>ops</owner></app>\n"
    assert cli.ok("metadata", "web1", APP, "--config") == "<app><owner>ops</owner></app>\n"
    assert ('<app:app xmlns:app="http://example.org/app/1"><app:owner>ops</app:owner></app:app>'
            in cli.ok("dumpxml", "web1", "--inactive"))
    assert cli.fails("metadata", "web1", APP, "--live") == (
        "error: domain 'web1' is not running: it has no live metadata")
    assert "is not running" in cli.fails("metadata", "web1", APP, "--live", "--set", "<a/>", "--key", "a")
    assert cli.ok("metadata", "web1", APP, "--remove") == "Metadata removed\n"
    assert "has no metadata element" in cli.fails("metadata", "web1", APP)
    assert "<metadata" not in cli.ok("dumpxml", "web1")


def test_live_and_config_of_a_running_domain(cli: CLI, xml: XMLFactory) -> None:
    cli.ok("define", "-", input=xml("web2"))
    cli.ok("start", "web2", "--paused")
    cli.ok("metadata", "web2", APP, "--set", "<app>both</app>", "--key", "app")
    cli.ok("metadata", "web2", APP, "--set", "<app>live</app>", "--key", "app", "--live")
    assert cli.ok("metadata", "web2", APP) == "<app>live</app>\n"
    assert cli.ok("metadata", "web2", APP, "--live") == "<app>live</app>\n"
    assert cli.ok("metadata", "web2", APP, "--config") == "<app>both</app>\n"
    cli.ok("metadata", "web2", APP, "--set", "<app>next</app>", "--key", "app", "--config")
    assert (cli.ok("metadata", "web2", APP), cli.ok("metadata", "web2", APP, "--config")) == (
        "<app>live</app>\n", "<app>next</app>\n")
    cli.ok("metadata", "web2", APP, "--set", "<app>all</app>", "--key", "app", "--live", "--config")
    assert (cli.ok("metadata", "web2", APP), cli.ok("metadata", "web2", APP, "--config")) == (
        "<app>all</app>\n", "<app>all</app>\n")
    cli.ok("destroy", "web2")


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "<app>"], "error: --set needs --key PREFIX, the namespace prefix to store the element under"),
    (["--set", "<app>", "--key", "app"], "error: line 1: malformed metadata XML: "),
    (["--set", "<a/><b/>", "--key", "app"], "error: metadata XML must be one element, not 2"),
    (["--set", "<a/>", "--key", "1a"], "error: '1a' is not an XML name, so it cannot be a namespace prefix"),
    (["--live", "--config"], "error: reading metadata takes --live or --config, not both"),
])
def test_errors_are_one_line(cli: CLI, xml: XMLFactory, args: list[str], message: str) -> None:
    cli.ok("define", "-", input=xml("web3"))
    assert cli.fails("metadata", "web3", APP, *args).startswith(message)


def test_bad_uri_unknown_domain_and_usage_errors(cli: CLI, xml: XMLFactory) -> None:
    cli.ok("define", "-", input=xml("web4"))
    assert cli.fails("metadata", "web4", "") == "error: a metadata namespace URI must be a non-empty string"
    assert cli.fails("metadata", "nosuch", APP) == "error: no domain with name or uuid 'nosuch'"
    result = cli("metadata", "web4", APP, "--set", "<a/>", "--key", "a", "--remove")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_a_transient_domain_is_changed_live(cli: CLI, xml: XMLFactory, state_dir: Path) -> None:
    async def create() -> None:  # the command line has no create yet: the API makes the transient domain
        async with avirt.connect("qemu:///session", state_dir=state_dir) as conn:
            await conn.create_xml(xml("web5"), paused=True)

    anyio.run(create)
    assert cli.fails("metadata", "web5", APP, "--set", "<app/>", "--key", "app").startswith(
        "error: domain 'web5' is transient: it has no persistent definition to change")
    done = cli.ok("metadata", "web5", APP, "--set", "<app/>", "--key", "app", "--live")
    assert done == "Metadata modified\n"
    assert cli.ok("metadata", "web5", APP) == "<app/>\n"
    assert "transient" in cli.fails("metadata", "web5", APP, "--config")
    cli.ok("destroy", "web5")


def test_the_test_driver(cli: CLI) -> None:
    """``-c test:///default``: each command a fresh world whose domain ``test`` runs."""
    command = [avirt_executable(), "-c", "test:///default", "metadata", "test", APP]
    done = subprocess.run([*command, "--set", "<app/>", "--key", "app"], capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert (done.returncode, done.stdout, done.stderr) == (0, "Metadata modified\n", "")
    missing = subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean_env())
    assert missing.returncode == 1 and "has no metadata element" in missing.stderr  # a fresh world
