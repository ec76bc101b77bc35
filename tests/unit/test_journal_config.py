"""``[journal]``: where the journal is kept, and that its password never shows.

Without ``[journal] url`` the journal is SQLite in the state directory, as before;
with one, PostgreSQL. A bad URL is a config error naming the key (or the variable)
with the password masked; a reload never switches journals under a running daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rollbackd.assembly import journal_password, open_journal
from rollbackd.config import parse_config
from rollbackd.errors import InvalidInput, JournalError
from rollbackd.journal import SqliteJournal, journal_path
from rollbackd.loader import Loaded
from rollbackd.state import keep_running

SECRET = "hunter2-secret"  # noqa: S105 -- a made-up password that must never show


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidInput) as refused:
        parse_config(text, "config.toml", env or {})
    return [str(p) for p in refused.value.problems]


def test_without_a_url_the_journal_is_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    """Nothing changes for a single machine: journal.sqlite3 in state_dir."""
    config = parse_config(f'[daemon]\nstate_dir = "{tmp_path}"\n', "config.toml", {})
    assert config.journal.url is None
    journal = open_journal(config)
    assert isinstance(journal, SqliteJournal)
    assert journal.location == str(journal_path(tmp_path))
    journal.close()


def test_a_url_that_is_not_postgresql_names_the_key_and_masks_the_password() -> None:
    """config.toml: journal.url: ..., with the password as ***."""
    [problem] = problems(f'[journal]\nurl = "mysql://app:{SECRET}@db:3306/rollbackd"\n')
    assert problem.startswith("config.toml: journal.url: expected a postgresql://")
    assert "mysql://app:***@db:3306/rollbackd" in problem
    assert SECRET not in problem


def test_the_url_can_come_from_the_environment_and_is_blamed_there() -> None:
    """ROLLBACKD_JOURNAL__URL sets it; a bad one is that variable's problem, password masked."""
    url = f"postgresql://app:{SECRET}@db:5432/rollbackd"
    config = parse_config("", "config.toml", {"ROLLBACKD_JOURNAL__URL": url})
    assert config.journal.url == url
    assert SECRET not in repr(config)
    [problem] = problems("", {"ROLLBACKD_JOURNAL__URL": url.replace("postgresql", "http")})
    assert problem.startswith("environment ROLLBACKD_JOURNAL__URL: expected a postgresql://")
    assert SECRET not in problem


def test_one_password_one_place() -> None:
    """A password both in the URL and in password_file is ambiguous; password_file alone
    means nothing without a URL."""
    both = problems(
        f'[journal]\nurl = "postgresql://app:{SECRET}@db/rollbackd"\npassword_file = "/pw"\n'
    )
    assert both == ["config.toml: journal: the password is in both url and password_file: keep one"]
    alone = problems('[journal]\npassword_file = "/pw"\n')
    assert alone == ["config.toml: journal: password_file needs url (the journal in PostgreSQL)"]


def test_the_password_file_gives_its_first_line_or_a_clear_error(tmp_path: Path) -> None:
    """A trailing newline is no part of the password; an unreadable file names the key."""
    kept = tmp_path / "password"
    kept.write_text(f"{SECRET}\n", encoding="utf-8")
    assert journal_password(kept) == SECRET
    with pytest.raises(JournalError, match=r"journal\.password_file: cannot read .*missing"):
        journal_password(tmp_path / "missing")


def test_a_reload_keeps_the_journal_in_use_without_showing_its_url(tmp_path: Path) -> None:
    """SIGHUP with another [journal]: the running one is kept, and the URL is not printed."""
    running = parse_config("", "config.toml", {})
    changed = parse_config(
        f'[journal]\nurl = "postgresql://app:{SECRET}@db/rollbackd"\n', "config.toml", {}
    )
    kept, restart = keep_running(running, Loaded(changed, tmp_path / "config.toml", (), ()))
    assert kept.config.journal.url is None
    assert restart == ["journal (its URL is not shown: it may hold a password)"]
