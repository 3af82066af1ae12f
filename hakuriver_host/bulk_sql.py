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
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy.engine import Connection, Dialect

Converter = Callable[[Any], Any] | None
# The parameter that names the row an UPDATE changes (its primary key).
_WHERE = "where_key"


class BulkStatements:
    """INSERTs, and UPDATEs by primary key, of ``table`` for ``dialect``."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self._table = table
        self._dialect = dialect
        (self._key,) = table.primary_key.columns
        # (kind, columns) -> SQL text, and each parameter in the driver's order: its name,
        # the row's key for its value, the value's converter.
        self._compiled: dict[
            tuple[str, tuple[str, ...]], tuple[str, list[tuple[str, str, Converter]]]
        ] = {}

    def insert(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        self._execute(connection, "insert", rows)

    def update(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Set each row's columns on the row with its primary key (the key is among them)."""
        self._execute(connection, "update", rows)

    def _execute(
        self, connection: Connection, kind: str, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for row in rows:
            by_columns.setdefault(tuple(row), []).append(row)
        for columns, same in by_columns.items():
            sql, params = self._statement(kind, columns)
            values: list[Any]
            if self._dialect.positional:
                values = [tuple(_converted(row, params)) for row in same]
            else:
                names = [name for name, _, _ in params]
                values = [dict(zip(names, _converted(row, params), strict=True)) for row in same]
            connection.exec_driver_sql(sql, values)

    def _statement(
        self, kind: str, columns: tuple[str, ...]
    ) -> tuple[str, list[tuple[str, str, Converter]]]:
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
        order = compiled.positiontup if compiled.positional else list(compiled.binds)
        params = [(name, keys[name], self._converter(keys[name])) for name in order or ()]
        found = (compiled.string, params)
        self._compiled[(kind, columns)] = found
        return found

    def _converter(self, column: str) -> Converter:
        sql_type = self._table.c[column].type
        return sql_type.dialect_impl(self._dialect).bind_processor(self._dialect)


def _converted(row: Mapping[str, Any], params: list[tuple[str, str, Converter]]) -> list[Any]:
    return [row[key] if convert is None else convert(row[key]) for _, key, convert in params]
