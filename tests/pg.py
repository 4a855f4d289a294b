"""Fresh PostgreSQL databases for tests: one per test (or server), dropped after.

The development and CI machines run PostgreSQL on 127.0.0.1:5432 (trust authentication, user
postgres); EDRV_TEST_PG overrides the server URL (without a database). Unreachable: the tests
that need it skip, except under CI (env CI set), where they fail: CI must not skip silently.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

SERVER = os.environ.get("EDRV_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


async def _admin(sql: str) -> None:
    import asyncpg

    con = await asyncpg.connect(f"{SERVER}/postgres", timeout=5)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def _run(sql: str) -> None:
    asyncio.run(_admin(sql))


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is needed under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unreachable at {SERVER}: {reason}")


@contextmanager
def database() -> Iterator[str]:
    """A new, empty database; yields its URL; dropped (connections closed) after."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        unavailable("asyncpg is not installed (pip install -e '.[test]')")
    name = f"edrv_t_{secrets.token_hex(6)}"
    try:
        _run(f"CREATE DATABASE {name}")
    except (TimeoutError, OSError) as e:
        unavailable(str(e))
    try:
        yield f"{SERVER}/{name}"
    finally:
        _run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh database of this test's own."""
    with database() as url:
        yield url
