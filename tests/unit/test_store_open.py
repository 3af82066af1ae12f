"""A database the Host cannot open stops it with one line naming the database (its
password hidden), not a traceback; one it creates is private to its user."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from hakuriver_common import commands as cli
from hakuriver_host import migrations
from hakuriver_host.main import main
from hakuriver_host.store import DatabaseError, Store
from tests.unit.local_cluster import LocalCluster


def _migrating_fails(url: str, busy_timeout: float = 5.0) -> str:
    """What the store at ``url`` says when it cannot be migrated (a SQLite lock: after
    ``busy_timeout`` seconds)."""
    store = Store(url, busy_timeout)
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


def test_new_admin_token_with_a_database_url_that_names_no_database_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a change of the config fixes it, as for the Host's start (exit 2: systemd's
    RestartPreventExitStatus=2); a database it cannot open may come back (exit 1)."""
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "nosuchdb://river:hunter2@server/hakuriver"\n')
    with pytest.raises(cli.Exit) as stopped:
        main(config=config, new_admin_token=True)
    assert stopped.value.exit_code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: cannot use the database nosuchdb://river:***@server/")
    config.write_text(f'[database]\ndb_file = "{tmp_path}"\n')
    with pytest.raises(cli.Exit) as stopped:
        main(config=config, new_admin_token=True)
    assert stopped.value.exit_code == 1


def _host_says(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``hakuriver.host --new-admin-token`` prints on stderr for the database
    ``host.db`` in ``config_dir`` (it opens and migrates it as a start does)."""
    config = config_dir / "config.toml"
    config.write_text(f'[database]\ndb_file = "{config_dir / "host.db"}"\n')
    with pytest.raises(cli.Exit):
        main(config=config, new_admin_token=True)
    return capsys.readouterr().err


def test_a_database_of_a_newer_hakuriver_is_one_line_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Going back to an older version without restoring the backup (operations.md): it
    printed Alembic's traceback ending in "Can't locate revision identified by '0099'"."""
    path = tmp_path / "host.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.migrate()
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    assert _host_says(tmp_path, capsys) == (
        f"error: cannot use the database {path} (database.db_file): its schema is revision "
        f"0099, which a newer HakuRiver wrote (this one knows up to "
        f"{migrations.newest_revision()}): run that version, or restore the backup taken "
        "before the upgrade\n"
    )
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0099",)]


def test_a_database_another_program_made_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A db_file that names another program's SQLite database with a table of the Host's
    name: it printed a traceback ending in RuntimeError."""
    with sqlite3.connect(tmp_path / "host.db") as conn:
        conn.execute("CREATE TABLE tasks (task_id BIGINT PRIMARY KEY, status VARCHAR NOT NULL)")
    assert _host_says(tmp_path, capsys) == (
        f"error: cannot use the database {tmp_path / 'host.db'} (database.db_file): table "
        "tasks lacks column command, which has no default: this database was not made by "
        "HakuRiver\n"
    )


def test_new_admin_token_that_cannot_be_written_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It stored the token (and made the admin) first, then stopped with "[Errno 17] File
    exists: ...": a token nobody holds."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\ndb_file = "{tmp_path / "host.db"}"\n'
        f'[auth]\ncredentials_file = "{blocker / "token"}"\n'
    )
    with pytest.raises(cli.Exit):
        main(config=config, new_admin_token=True)
    assert capsys.readouterr().err == (
        f"error: cannot write a new admin API token to {blocker / 'token'} "
        "(auth.credentials_file): File exists\n"
    )
    with sqlite3.connect(tmp_path / "host.db") as conn:
        stored = [conn.execute(f"SELECT * FROM {t}").fetchall() for t in ("users", "api_tokens")]
    assert stored == [[], []]


@pytest.mark.fresh_database
async def test_the_database_it_creates_is_its_users_only(local_cluster: LocalCluster) -> None:
    """Every task's command and environment variables (secrets passed with --env) are in
    the database, and writing it makes anybody an admin: nobody else may read it, nor its
    write-ahead log, which holds the same rows before they reach the file."""
    await local_cluster.add_runner("a")
    await local_cluster.submit("job", env={"API_KEY": "hunter2"})
    db_file = local_cluster.config.database.db_file
    files = [db_file, *(db_file.with_name(db_file.name + end) for end in ("-wal", "-shm"))]
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        path.name: 0o600 for path in files
    }


def test_a_database_another_program_holds_locked_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "host.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    store.close()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        assert _migrating_fails(f"sqlite:///{path}", busy_timeout=0.2) == (
            f"cannot open the database {path} (database.db_file): database is locked: "
            "another program is writing to it (a sqlite3 shell with a transaction open?)"
        )
    finally:
        other.close()


@pytest.mark.parametrize("under", ["file", "file/sub"])
def test_a_database_under_a_file_is_one_line_naming_its_key(tmp_path: Path, under: str) -> None:
    """It said '[Errno 20] Not a directory: ...' (or 'File exists'), without the key."""
    (tmp_path / "file").write_text("")
    path = tmp_path / under / "host.db"
    with pytest.raises(DatabaseError) as raised:
        Store(f"sqlite:///{path}")
    assert str(raised.value) == (
        f"cannot open the database {path} (database.db_file): cannot create {path.parent}: "
        "Not a directory"
    )
