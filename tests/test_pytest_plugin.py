"""The pytest plugin shipped with avirt: ``avirt_test_conn`` under anyio's plugin and under pytest-asyncio.

Each test runs a small test file in a pytest of its own (pytester) the way a user's suite would use the
fixture, and reads the outcome: every test in it passed, each on a fresh connection that is closed
at teardown.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: What a user writes. MARK is the framework's mark; the jobs left running prove the close at teardown.
USER_TESTS = """
import pytest
import avirt

MARK = pytest.mark.{mark}
JOBS = []
WEB1 = ("<domain type='qemu'><name>web1</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>")


@MARK
async def test_a_fresh_world_with_the_running_domain_test(avirt_test_conn):
    assert isinstance(avirt_test_conn, avirt.Connection)
    assert [d.name for d in await avirt_test_conn.list_domains()] == ["test"]
    dom = await avirt_test_conn.lookup("test")
    JOBS.append(await dom.block_pull("vda", bandwidth=1))  # runs until the connection closes
    await avirt_test_conn.define_xml(WEB1)


@MARK
async def test_the_next_test_gets_a_new_world(avirt_test_conn):
    assert [d.name for d in await avirt_test_conn.list_domains()] == ["test"]
    dom = await avirt_test_conn.lookup("test")
    assert await dom.block_job("vda") is None
    assert JOBS[0].status is avirt.BlockJobStatus.FAILED  # ended when its connection closed


@MARK
async def test_a_connection_per_test(avirt_test_conn):
    async with avirt_test_conn.events(kinds={{avirt.EventKind.LIFECYCLE}}) as events:
        await (await avirt_test_conn.lookup("test")).suspend()
        event = await events.__anext__()
    assert (event.domain, event.type) == ("test", avirt.LifecycleType.SUSPENDED)
"""

ANYIO_CONFTEST = """
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def plugin_args() -> list[str]:
    """Load the plugin by name unless it is installed (its entry point loads it then)."""
    installed = any(ep.value == "avirt.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "avirt.pytest_plugin"]


def run(pytester: pytest.Pytester, mark: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=USER_TESTS.format(mark=mark))
    return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", *args)


@pytest.mark.parametrize("pytest_asyncio", ["loaded", "not loaded"])
def test_under_anyio(pytester: pytest.Pytester, pytest_asyncio: str) -> None:
    pytester.makeconftest(ANYIO_CONFTEST)
    result = run(pytester, "anyio", *(["-p", "no:asyncio"] if pytest_asyncio == "not loaded" else []))
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_under_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    result = run(pytester, "asyncio", "-o", f"asyncio_mode={mode}",
                 "-o", "asyncio_default_fixture_loop_scope=function", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=3)


def test_under_pytest_asyncio_with_a_module_loop(pytester: pytest.Pytester) -> None:
    """A test on a module-wide loop gets its connection made on that loop."""
    result = run(pytester, "asyncio(loop_scope='module')",
                 "-o", "asyncio_default_fixture_loop_scope=function")
    result.assert_outcomes(passed=3)


def test_a_test_without_an_async_mark_is_told_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_sync(avirt_test_conn):\n    pass\n")
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*mark the test with @pytest.mark.anyio*or @pytest.mark.asyncio*"])


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"avirt": "avirt.pytest_plugin"}
    import avirt.pytest_plugin

    assert callable(avirt.pytest_plugin.avirt_test_conn)
