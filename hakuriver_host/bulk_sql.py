"""Many rows of one table in one ``executemany`` of the driver.

SQLAlchemy's bulk paths, ORM or Core, spend 15-50 us of Python per row building and
converting its parameters, several times what the driver itself takes; a job array writes
tens of thousands of rows at once, on the thread every other write waits for. Here a
statement is compiled once per set of columns, each value goes through the dialect's own
bind processor for its column (the conversion SQLAlchemy would apply: JSON, times), and the
rows go to the driver in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

from sqlalchemy import Table, bindparam
from sqlalchemy.engine import Connection, Dialect

Converter = Callable[[Any], Any]
Kind = Literal["insert", "update"]
# The parameter that names the row an UPDATE changes (its primary key).
_WHERE = "where_key"


@dataclass(frozen=True)
class _Statement:
    """A compiled statement: its SQL text, its parameters' names in the driver's order,
    what reads their values off a row (one C call), and the converters of those values
    that need one, by position."""

    sql: str
    names: list[str]
    read: Callable[[Mapping[str, Any]], Any]
    converters: list[tuple[int, Converter]]

    def values(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """The rows' parameters, converted. A value that is the very object the row
        before had in that column is converted once: a job array's rows share their submission time
        and their first events' (a time's conversion is ~2 us, SQLite's text format)."""
        last: dict[int, tuple[Any, Any]] = {}
        many = len(self.names) > 1
        out = []
        for row in rows:
            values = list(self.read(row)) if many else [self.read(row)]
            for index, convert in self.converters:
                value = values[index]
                seen = last.get(index)
                if seen is not None and seen[0] is value:
                    values[index] = seen[1]
                else:
                    values[index] = converted = convert(value)
                    last[index] = (value, converted)
            out.append(values)
        return out


@dataclass(frozen=True)
class Prepared:
    """One statement and its rows' driver parameters, ready to execute."""

    sql: str
    values: list[Any]


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
        prepared = []
        for columns, same in by_columns.items():
            statement = self._statement(kind, columns)
            values: list[Any]
            if self._dialect.positional:
                values = [tuple(row) for row in statement.values(same)]
            else:
                names = statement.names
                values = [dict(zip(names, row, strict=True)) for row in statement.values(same)]
            prepared.append(Prepared(statement.sql, values))
        return prepared

    @staticmethod
    def execute(connection: Connection, prepared: Sequence[Prepared]) -> None:
        for statement in prepared:
            connection.exec_driver_sql(statement.sql, statement.values)

    def _statement(self, kind: str, columns: tuple[str, ...]) -> _Statement:
        found = self._compiled.get((kind, columns))
        if found is not None:
            return found
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
        converters = [
            (index, convert)
            for index, name in enumerate(names)
            if (convert := self._converter(keys[name])) is not None
        ]
        found = _Statement(
            compiled.string, names, itemgetter(*(keys[name] for name in names)), converters
        )
        self._compiled[(kind, columns)] = found
        return found

    def _converter(self, column: str) -> Converter | None:
        sql_type = self._table.c[column].type
        return sql_type.dialect_impl(self._dialect).bind_processor(self._dialect)
