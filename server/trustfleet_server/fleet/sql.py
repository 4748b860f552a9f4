"""The SQL shim: one connection to SQLite or PostgreSQL, the same SQL on both.

`connect(target)` takes a file path (SQLite, WAL mode) or a `postgresql://`
URL (psycopg 3, installed with the `postgres` extra). Queries are written
with `?` placeholders; rows are read by column name (`Connection.rows`).
Every driver error becomes a FleetDBError: a database failure, never a
usage error.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from trustfleet_server.errors import FleetStoreError


class FleetDBError(FleetStoreError):
    """The fleet database cannot be opened or used (exit code 2)."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_postgres(target: str) -> bool:
    return url_scheme(target) in ("postgresql", "postgres")


def url_scheme(target: str) -> str | None:
    """The lowercased scheme of a `scheme://...` target; None for a path (SQLite)."""
    m = _SCHEME.match(target)
    return m.group(1).lower() if m else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class Connection:
    """A connection and its dialect. One transaction at a time: a lock serialises them, so
    another thread may share it (a reader beside serve's thread); for throughput open one
    per thread or process."""

    def __init__(self, conn: Any, dialect: str, where: str, reconnect: Any = None) -> None:
        self._lock = threading.RLock()
        self._conn = conn
        self.dialect = dialect
        self.where = where
        self._reconnect = reconnect
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if dialect == "postgresql":
            import psycopg

            self._errors = (psycopg.Error,)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextlib.contextmanager
    def _tx(self, what: str, write: bool = False) -> Iterator[Any]:
        """A transaction; every driver error becomes a FleetDBError naming `what`.

        On SQLite a writer takes the write lock up front (BEGIN IMMEDIATE), so
        two writers queue on the busy timeout instead of failing on upgrade.
        """
        with self._lock:
            if self._reconnect is not None and getattr(self._conn, "closed", False):
                self._conn = self._reconnect()
            try:
                if self.dialect == "sqlite":
                    self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                cur = self._conn.cursor()
                try:
                    yield cur
                except BaseException:
                    self._conn.rollback()
                    raise
                self._conn.commit()
            except self._errors as exc:
                with contextlib.suppress(Exception):
                    self._conn.rollback()
                raise FleetDBError(f"{self.where}: {what} failed: {first_line(exc)}") from None

    def _exec(self, cur: Any, sql: str, params: Sequence = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    @staticmethod
    def rows(cur: Any) -> list[dict]:
        """The cursor's remaining rows, each a dict by column name."""
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    @staticmethod
    def row(cur: Any) -> dict | None:
        """The cursor's next row as a dict by column name, or None."""
        r = cur.fetchone()
        return None if r is None else dict(zip([d[0] for d in cur.description], r, strict=True))

    def _executemany_changes(self, cur: Any, sql: str, rows: list[tuple]) -> int:
        """executemany, returning how many rows it inserted or updated."""
        if self.dialect == "sqlite":
            # sqlite3's rowcount after executemany does not count upserts reliably.
            before = self._conn.total_changes
            cur.executemany(sql, rows)
            return self._conn.total_changes - before
        cur.executemany(self._sql(sql), rows)
        return max(cur.rowcount, 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


def connect(target: str | os.PathLike[str], create: bool = True) -> tuple[Any, str, str, Any]:
    """(driver connection, dialect, where, reconnect) for a path or a postgresql:// URL.

    The URL scheme decides the kind: none (a path) is SQLite, postgresql:// or
    postgres:// is PostgreSQL, any other is refused. libpq URL options work,
    e.g. `?options=-csearch_path%3Dtrustfleet` for a schema. `where` names the
    target for messages, without its password. `create=False`: a SQLite file
    that does not exist is refused, and none is created.

    Raises:
        FleetDBError: an unsupported scheme, no such file, cannot open or connect.
    """
    target = os.fspath(target)
    scheme = url_scheme(target)
    if scheme in ("postgresql", "postgres"):
        return _connect_postgres(target)
    if scheme is not None:
        raise FleetDBError(f"unsupported database URL scheme {scheme} (use a path for SQLite or "
                           f"postgresql://...)")
    return _connect_sqlite(target, create), "sqlite", target, None


def _connect_sqlite(path: str, create: bool = True) -> Any:
    if not create and not os.path.exists(path):
        raise FleetDBError(f"{path}: no such fleet database (serve, rollout start and publish --db "
                           f"create one)")
    # mode=rw: a file removed since the check is not created again either.
    name, uri = (path, False) if create else (f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw", True)
    try:
        # Autocommit at the driver level: transactions are explicit (BEGIN IMMEDIATE),
        # so a reader never holds a lock and writers queue on busy_timeout.
        conn = sqlite3.connect(name, uri=uri, timeout=10.0, isolation_level=None, check_same_thread=False)
        if create:
            _refuse_foreign(conn, path)  # before anything is written, the journal mode included
        if create:  # persistent: a store this code made is WAL already; others are left as they are
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        raise FleetDBError(f"{path}: cannot open the SQLite database: {first_line(exc)}") from None
    return conn


def _refuse_foreign(conn: Any, path: str) -> None:
    """A SQLite file is the operator's: trustfleet adds its tables to a new or empty file, or to its
    own store, never to another program's database. Raises: FleetDBError naming a few of its tables."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    if names and "tf_meta" not in names:
        conn.close()
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise FleetDBError(f"{path}: a SQLite database of something else (tables: {shown}); nothing "
                           f"written: give the fleet store a file of its own")


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _connect_postgres(url: str) -> tuple[Any, str, str, Any]:
    where = _redact(url)
    try:
        import psycopg
    except ImportError:
        raise FleetDBError(f"{where}: PostgreSQL needs psycopg 3: pip install 'trustfleet[postgres]'") from None

    def connect() -> Any:
        try:
            return psycopg.connect(url, autocommit=False, connect_timeout=10)
        except psycopg.Error as exc:
            raise FleetDBError(f"{where}: cannot connect: {first_line(exc)}") from None

    return connect(), "postgresql", where, connect
