"""Many rows of one table in few driver calls.

SQLAlchemy's bulk paths, ORM or Core, spend 15-50 us of Python per row building and
converting its parameters, several times what the driver itself takes; a job array writes
tens of thousands of rows at once, on the thread every other write waits for. Here a
statement is compiled once per set of columns, each value goes through the dialect's own
bind processor for its column (the conversion SQLAlchemy would apply: JSON, times), and the
rows go to the driver together.

On SQLite they go as multi-row statements (``INSERT ... VALUES (..), (..)`` and
``UPDATE ... FROM (VALUES ..)``), hundreds of rows each (thousands when they share values),
not as one ``executemany``:
Python's sqlite3 lets go of the GIL around every row's step, and while the event loop is
busy each of those steps waits up to the interpreter's switch interval to get it back. Ten
thousand rows then took seconds instead of ~90 ms (docs/benchmarks.md, "GIL convoy").
Other databases keep ``executemany``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Literal

from sqlalchemy import Table, bindparam
from sqlalchemy.engine import Connection, Dialect

Converter = Callable[[Any], Any]
Kind = Literal["insert", "update"]
# The parameter that names the row an UPDATE changes (its primary key).
_WHERE = "where_key"
# SQLite's bound on a statement's parameters (999 before 3.32), and on the rows of one
# multi-row statement: a smaller statement lets the GIL go more often, a larger one is
# parsed more often in pieces.
_SQLITE_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
# UPDATE ... FROM came with SQLite 3.33; before it, updates go by executemany.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_ROWS_PER_STATEMENT = 500
# The rows of one INSERT whose rows share values (``_Statement._rows_shared``).
_SHARED_ROWS = 10_000
# No value is this object (``_each_converted``'s value before the first).
_NOTHING = object()


@dataclass(frozen=True)
class _Statement:
    """A compiled statement: its SQL text, its parameters' names in the driver's order,
    what reads their values off a row (one C call), and the converters of those values
    that need one, by position. A multi-row statement's text is ``sql`` (up to VALUES),
    ``row`` once per row joined by commas, then ``tail``; ``rows`` is how many rows it
    takes at most (1: one row's text, for ``executemany``). A multi-row INSERT also has
    ``select``, its text up to a SELECT list, for rows that share values."""

    sql: str
    names: list[str]
    read: Callable[[Mapping[str, Any]], Any]
    converters: list[tuple[int, Converter]]
    row: str = ""
    tail: str = ""
    rows: int = 1
    select: str = ""

    def prepared(self, columns: list[Sequence[Any]]) -> list[Prepared]:
        """Converted rows, given column by column, as the driver calls that write them."""
        if self.rows == 1:
            return [Prepared(self.sql, list(zip(*columns, strict=True)), many=True)]
        count = len(columns[0])
        # The columns every row shares (so does every chunk of them); None: no sharing.
        alike = [_all_same(column) for column in columns] if self.select and count > 1 else None
        per = self._rows_shared(alike) if alike is not None else self.rows
        out: list[Prepared] = []
        for start in range(0, count, per):
            chunk = [column[start : start + per] for column in columns]
            shared = self._shared(chunk, alike) if alike is not None and len(chunk[0]) > 1 else None
            if shared:
                out.append(shared)
                continue
            for at in range(0, len(chunk[0]), self.rows):
                out.append(self._listed([column[at : at + self.rows] for column in chunk]))
        return out

    def _rows_shared(self, alike: list[bool]) -> int:
        """How many rows one statement takes: as many as SQLite's bound on parameters
        allows when all rows share values (``alike``; ``_shared``), since each statement is
        a wait for the GIL on the store's thread while the event loop is busy (a job array's
        10,000 rows and events: 40 statements of 500 rows took ~80 ms beside a thread
        spinning in Python, 3 took ~30); else ``rows``."""
        varying = alike.count(False)
        if varying in (0, len(alike)):
            return self.rows
        once = len(alike) - varying
        return max(self.rows, min(_SHARED_ROWS, (_SQLITE_PARAMETERS - once) // varying))

    def _listed(self, chunk: list[Sequence[Any]]) -> Prepared:
        sql = f"{self.sql}{', '.join([self.row] * len(chunk[0]))}{self.tail}"
        return Prepared(sql, tuple(chain.from_iterable(zip(*chunk, strict=True))), many=False)

    def _shared(self, chunk: list[Sequence[Any]], alike: list[bool]) -> Prepared | None:
        """The rows as ``INSERT ... SELECT ?, v.column1, ... FROM (VALUES ...)``: a value
        every row has in a column is bound once, the rest row by row. A job array's rows
        differ in 5 of 34 columns; binding each value was most of their insert. None if
        no column (or every column) is the same in all rows. ``alike``: the columns known
        to be (those all rows of which ``chunk`` is a part share), not checked again."""
        shared = [known or _all_same(column) for column, known in zip(chunk, alike, strict=True)]
        if all(shared) or not any(shared):
            return None
        picks = []
        varying = []
        for column, same in zip(chunk, shared, strict=True):
            if same:
                picks.append("?")
            else:
                varying.append(column)
                picks.append(f"v.column{len(varying)}")
        row = f"({', '.join('?' * len(varying))})"
        rows = ", ".join([row] * len(chunk[0]))
        sql = f"{self.select}{', '.join(picks)} FROM (VALUES {rows}) AS v"
        once = (column[0] for column, same in zip(chunk, shared, strict=True) if same)
        return Prepared(sql, (*once, *chain.from_iterable(zip(*varying, strict=True))), many=False)

    def columns(self, rows: Sequence[Mapping[str, Any]]) -> list[Sequence[Any]]:
        """The rows' parameters column by column, converted. A column whose rows all hold
        one value is converted once, and in the others a value that is the very object
        of the row before is: a job array's rows share most of theirs, a batch of changes
        its time (a time's conversion is ~2 us, SQLite's text format)."""
        if not rows:
            return [() for _ in self.names]
        read = self.read
        columns: list[Sequence[Any]] = (
            list(zip(*map(read, rows), strict=True))
            if len(self.names) > 1
            else [tuple(map(read, rows))]
        )
        for index, convert in self.converters:
            column = columns[index]
            if _all_same(column):
                columns[index] = (convert(column[0]),) * len(column)
            else:
                columns[index] = _each_converted(convert, column)
        return columns


def _all_same(column: Sequence[Any]) -> bool:
    """Whether every value of a (non-empty) column can be written as its first: an equal
    value of the same type, or for a list or dict the very same object (1, 1.0 and True
    are equal, and so are dicts in another order, but they are not written alike)."""
    first = column[0]
    if isinstance(first, list | dict):
        return all(value is first for value in column)
    return column.count(first) == len(column) and len(set(map(type, column))) == 1


def _each_converted(convert: Converter, column: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    last: Any = _NOTHING
    converted = None
    for value in column:
        if value is not last:
            last, converted = value, convert(value)
        out.append(converted)
    return out


@dataclass(frozen=True)
class Prepared:
    """One statement and its driver parameters, ready to execute: a list of rows' for
    ``executemany`` (``many``), or one multi-row statement's flat tuple."""

    sql: str
    values: Any
    many: bool


class BulkStatements:
    """INSERTs, and UPDATEs by primary key, of ``table`` for ``dialect``."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self._table = table
        self._dialect = dialect
        (self._key,) = table.primary_key.columns
        self._compiled: dict[tuple[str, tuple[str, ...]], _Statement] = {}

    def insert(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        self.execute(connection, self.prepare("insert", rows))

    def update(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Set each row's columns on the row with its primary key (the key is among them)."""
        self.execute(connection, self.prepare("update", rows))

    def prepare(
        self, kind: Kind, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = ()
    ) -> list[Prepared]:
        """The rows as driver parameters, one statement per set of columns: each row's
        own, or ``columns`` read off every row (which may hold more). Needs no connection:
        a job array's rows are prepared on another thread than the store's."""
        by_columns: dict[tuple[str, ...], Sequence[Mapping[str, Any]]] = {}
        if columns:
            by_columns[tuple(columns)] = rows
        else:
            grouped: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
            for row in rows:
                grouped.setdefault(tuple(row), []).append(row)
            by_columns.update(grouped)
        prepared: list[Prepared] = []
        for columns, same in by_columns.items():
            statement = self._statement(kind, columns)
            converted = statement.columns(same)
            if self._dialect.positional:
                prepared.extend(statement.prepared(converted))
            else:
                names = statement.names
                rows_of = zip(*converted, strict=True)
                values = [dict(zip(names, row, strict=True)) for row in rows_of]
                prepared.append(Prepared(statement.sql, values, many=True))
        return prepared

    @staticmethod
    def execute(connection: Connection, prepared: Sequence[Prepared]) -> None:
        for statement in prepared:
            connection.exec_driver_sql(statement.sql, statement.values)

    def _statement(self, kind: str, columns: tuple[str, ...]) -> _Statement:
        found = self._compiled.get((kind, columns))
        if found is None:
            sqlite = self._dialect.name == "sqlite" and (kind == "insert" or _UPDATE_FROM)
            make = self._sqlite if sqlite else self._compile
            found = self._compiled[(kind, columns)] = make(kind, columns)
        return found

    def _sqlite(self, kind: str, columns: tuple[str, ...]) -> _Statement:
        """A multi-row statement: an UPDATE takes its rows from a VALUES list joined on
        the primary key (whose first column is the key), an INSERT lists them."""
        quote = self._dialect.identifier_preparer.quote
        table = quote(self._table.name)
        key = self._key.name
        names = list(columns) if kind == "insert" else [key, *(c for c in columns if c != key)]
        select = ""
        if kind == "insert":
            head = f"INSERT INTO {table} ({', '.join(quote(c) for c in names)}) VALUES "
            select = f"{head[: -len('VALUES ')]}SELECT "
            tail = ""
        else:
            # SQLite names a VALUES list's columns column1, column2, ...
            sets = ", ".join(f"{quote(c)} = v.column{i + 1}" for i, c in enumerate(names) if i)
            head = f"UPDATE {table} SET {sets} FROM (VALUES "
            tail = f") AS v WHERE {table}.{quote(key)} = v.column1"
        return _Statement(
            head,
            names,
            itemgetter(*names),
            self._converters(names),
            row=f"({', '.join('?' * len(names))})",
            tail=tail,
            rows=max(1, min(_ROWS_PER_STATEMENT, _SQLITE_PARAMETERS // len(names))),
            select=select,
        )

    def _compile(self, kind: str, columns: tuple[str, ...]) -> _Statement:
        statement: Any
        if kind == "insert":
            statement = self._table.insert().values({c: bindparam(c) for c in columns})
            keys = {c: c for c in columns}
        else:
            sets = [c for c in columns if c != self._key.name]
            statement = (
                self._table.update()
                .where(self._key == bindparam(_WHERE))
                .values({c: bindparam(f"set_{c}") for c in sets})
            )
            keys = {f"set_{c}": c for c in sets} | {_WHERE: self._key.name}
        compiled = statement.compile(dialect=self._dialect)
        names = list((compiled.positiontup if compiled.positional else compiled.binds) or ())
        read = [keys[name] for name in names]
        return _Statement(compiled.string, names, itemgetter(*read), self._converters(read))

    def _converters(self, columns: Sequence[str]) -> list[tuple[int, Converter]]:
        """The bind processors of the columns that have one, by position."""
        out: list[tuple[int, Converter]] = []
        for index, column in enumerate(columns):
            sql_type = self._table.c[column].type
            convert = sql_type.dialect_impl(self._dialect).bind_processor(self._dialect)
            if convert is not None:
                out.append((index, convert))
        return out
