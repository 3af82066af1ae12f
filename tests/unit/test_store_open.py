"""A database the Host cannot open stops it with one line naming the database (its
password hidden), not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakuriver_common import commands as cli
from hakuriver_host.main import main
from hakuriver_host.store import DatabaseError, Store


def _migrating_fails(url: str) -> str:
    """What the store at ``url`` says when it cannot be migrated."""
    store = Store(url)
    try:
        with pytest.raises(DatabaseError) as raised:
            store.migrate()
    finally:
        store.close()
    return str(raised.value)


def test_a_database_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    message = _migrating_fails(f"sqlite:///{tmp_path}")  # a folder, not a file
    assert "\n" not in message
    assert str(tmp_path) in message and "database.db_file" in message
    assert "unable to open database file" in message


def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    message = _migrating_fails("postgresql+psycopg://river:hunter2@127.0.0.1:1/hakuriver")
    assert "\n" not in message and "hunter2" not in message
    assert "river:***@127.0.0.1:1/hakuriver" in message and "database.url" in message


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("not a url", "database.url is not a SQLAlchemy URL"),
        ("nosuchdb://u:hunter2@h/d", "nosuchdb"),
    ],
)
def test_a_url_that_names_no_usable_database_is_one_line(url: str, said: str) -> None:
    with pytest.raises(DatabaseError) as raised:
        Store(url)
    message = str(raised.value)
    assert said in message and "hunter2" not in message and "\n" not in message


def test_new_admin_token_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\ndb_file = "{tmp_path}"\n')
    with pytest.raises(cli.Exit):
        main(config=config, new_admin_token=True)
    assert capsys.readouterr().err == (
        f"error: cannot open the database {tmp_path} (database.db_file): "
        "unable to open database file\n"
    )
