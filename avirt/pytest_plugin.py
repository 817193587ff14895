"""A pytest plugin for testing code that uses avirt: the ``avirt_test_conn`` fixture.

Installed with avirt (a ``pytest11`` entry point), so a test suite only asks for the fixture::

    @pytest.mark.anyio                  # anyio's pytest plugin (anyio_backend "asyncio")
    async def test_my_code(avirt_test_conn):
        dom = await avirt_test_conn.lookup("test")
        ...

    @pytest.mark.asyncio                # or pytest-asyncio, in strict or auto mode
    async def test_my_code_too(avirt_test_conn):
        ...

``avirt_test_conn`` is an open :class:`~avirt.connection.Connection` on ``test:///default``: a fresh
world per test (one running domain ``test``, see the test driver in docs/API.md), closed at teardown.

Why a plain fixture in front of two async ones: an async fixture belongs to the framework that runs
it, and each framework runs its fixtures on its own event loop. A connection must live on the loop of
the test that uses it (its background tasks run there), so the fixture looks at the test's mark and
asks the framework that will run the test for the connection: anyio's plugin runs
``_avirt_test_conn_anyio`` in the test's runner; pytest-asyncio runs ``_avirt_test_conn_asyncio_<scope>``
on the loop of the test's ``loop_scope``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from avirt.connection import Connection

_Scope = Literal["function", "class", "module", "package", "session"]
_SCOPES: tuple[_Scope, ...] = ("function", "class", "module", "package", "session")


@pytest.fixture
def avirt_test_conn(request: pytest.FixtureRequest) -> Connection:
    """An open connection on ``test:///default`` for an ``async def`` test marked anyio or asyncio."""
    item = request.node
    if item.get_closest_marker("anyio") is not None:
        connection: Connection = request.getfixturevalue("_avirt_test_conn_anyio")
        return connection
    mark = item.get_closest_marker("asyncio")
    if mark is not None:
        if _asyncio_fixture is None:
            pytest.fail("avirt_test_conn: the test is marked asyncio but pytest-asyncio is not installed",
                        pytrace=False)
        scope = (mark.kwargs.get("loop_scope") or mark.kwargs.get("scope")
                 or request.config.getini("asyncio_default_test_loop_scope") or "function")
        connection = request.getfixturevalue(f"_avirt_test_conn_asyncio_{scope}")
        return connection
    pytest.fail("avirt_test_conn is a connection for async tests: mark the test with @pytest.mark.anyio "
                "(anyio's plugin) or @pytest.mark.asyncio (pytest-asyncio)", pytrace=False)


async def _connection() -> AsyncIterator[Connection]:
    import avirt

    async with avirt.connect("test:///default") as connection:
        yield connection


@pytest.fixture
async def _avirt_test_conn_anyio(anyio_backend: Any) -> AsyncIterator[Connection]:
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if backend != "asyncio":
        pytest.fail(f"avirt runs on asyncio, not {backend}: make the anyio_backend fixture return "
                    "'asyncio'", pytrace=False)
    async for connection in _connection():
        yield connection


def _asyncio_variant(scope: str) -> Callable[[], AsyncIterator[Connection]]:
    async def variant() -> AsyncIterator[Connection]:
        async for connection in _connection():
            yield connection

    variant.__name__ = f"_avirt_test_conn_asyncio_{scope}"
    return variant


try:
    from pytest_asyncio import fixture as _asyncio_fixture
except ImportError:  # then only anyio's plugin can run the tests
    _asyncio_fixture = None  # type: ignore[assignment]
else:
    # One fixture per loop scope: a connection made on the loop the test runs on, whatever its scope.
    for _scope in _SCOPES:
        globals()[f"_avirt_test_conn_asyncio_{_scope}"] = _asyncio_fixture(loop_scope=_scope)(
            _asyncio_variant(_scope))
