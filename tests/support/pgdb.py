"""A fresh schema on the real PostgreSQL for one test (TRUSTFLEET_TEST_PG, default the local
`test` database): skipped locally when unreachable, a failure under CI (support.environment)."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from support.environment import skip_or_fail

PG_URL = os.environ.get("TRUSTFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def unavailable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc).strip().splitlines()[0]}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """Yields a postgresql:// URL whose search_path is a new schema, dropped afterwards."""
    why = unavailable()
    if why:
        skip_or_fail(why)
    import psycopg

    schema = f"tf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
