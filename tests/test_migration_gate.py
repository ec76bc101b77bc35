"""The migration gate on real git repositories, and its pure verdict and marker reading."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from rollbackd.actions import process
from rollbackd.actions.migrations import check, migrations_to_undo
from rollbackd.core.deploys import MigrationFact
from rollbackd.core.migrations import (
    DEFAULT_MIGRATION_GLOBS,
    GateReport,
    Migration,
    decide_gate,
    glob_match,
    is_migration,
    read_markers,
)
from rollbackd.core.policy import GateVerdict

NOT_DONE = "the code rollback was not done and no data was touched"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
            "HOME": str(repo),
            "PATH": "/usr/bin:/bin",
        },
    ).stdout.strip()


def commit(repo: Path, files: Mapping[str, str | None], message: str) -> str:
    """Write (or, for None, delete) ``files``, commit them all, and return the commit."""
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A working copy whose first commit is tagged v1 (the rollback target)."""
    path = tmp_path / "web"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(
        path,
        {"app.toml": 'version = "v1"\n', "migrations/0001_init.sql": "CREATE TABLE t;\n"},
        "v1",
    )
    git(path, "tag", "v1")
    return path


def gate(repo: Path, target: str = "v1", facts: tuple[MigrationFact, ...] = ()) -> GateReport:
    return check(repo, "HEAD", target, DEFAULT_MIGRATION_GLOBS, facts)


# --- on real repositories ------------------------------------------------------------------------


def test_no_migration_since_the_target_lets_the_rollback_proceed(repo: Path) -> None:
    """A deploy that changed only code rolls back: the reason says no migration is in the way."""
    commit(repo, {"app.toml": 'version = "v2"\n'}, "v2")
    report = gate(repo)
    assert report.gate.verdict is GateVerdict.PROCEED
    assert report.gate.reason == "no migration between v1 and HEAD"
    assert report.migrations == ()


def test_a_migration_marked_backwards_compatible_lets_the_rollback_proceed(repo: Path) -> None:
    """A migration marked `-- rollbackd: backwards-compatible` does not stop the rollback."""
    commit(
        repo,
        {
            "migrations/0002_add_index.sql": (
                "-- rollbackd: backwards-compatible\nCREATE INDEX i ON t (c);\n"
            )
        },
        "v2",
    )
    report = gate(repo)
    assert report.gate.verdict is GateVerdict.PROCEED
    assert report.migrations == (
        Migration("migrations/0002_add_index.sql", True, False, "marker in file", "added"),
    )
    assert "migrations/0002_add_index.sql" in report.gate.reason
    assert "the schema and data stay as they are" in report.gate.reason


def test_a_migration_the_deploy_event_declares_compatible_lets_the_rollback_proceed(
    repo: Path,
) -> None:
    """The deploy event's migrations facts alone are enough to declare a file compatible."""
    commit(repo, {"migrations/0002_add_index.sql": "CREATE INDEX i ON t (c);\n"}, "v2")
    fact = MigrationFact("migrations/0002_add_index.sql", True, False)
    report = gate(repo, facts=(fact,))
    assert report.gate.verdict is GateVerdict.PROCEED
    assert report.migrations[0].declared_by == "deploy event"


def test_an_undeclared_migration_blocks_the_rollback_and_is_named(repo: Path) -> None:
    """A migration without a declaration stops the rollback and the database role is told which."""
    commit(repo, {"migrations/0003_drop_col.sql": "ALTER TABLE t DROP COLUMN c;\n"}, "v2")
    report = gate(repo)
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert report.gate.reason.startswith(
        "1 migration would be undone between v1 and HEAD: migrations/0003_drop_col.sql "
        "(added; not declared backwards compatible, changes data: unknown); "
        "blocked by migrations/0003_drop_col.sql; whether data changes are involved is unknown"
    )
    assert NOT_DONE in report.gate.reason
    assert report.gate.reason.endswith("consult the database role")


def test_a_compatible_migration_that_changes_data_blocks_the_rollback(repo: Path) -> None:
    """A backwards-compatible migration that also changes data still needs the database role."""
    text = "# rollbackd: backwards-compatible\n# rollbackd: changes-data\nop.execute(sql)\n"
    commit(repo, {"alembic/versions/0004_backfill.py": text}, "v2")
    report = gate(repo)
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert "(added; backwards compatible, changes data: yes, per marker in file)" in (
        report.gate.reason
    )
    assert "data changes are involved" in report.gate.reason


def test_of_two_migrations_only_the_undeclared_one_blocks_but_both_are_listed(
    repo: Path,
) -> None:
    """With one declared and one undeclared migration, the reason blames only the undeclared."""
    commit(
        repo,
        {
            "migrations/0002_add_index.sql": "-- rollbackd: backwards-compatible\nCREATE INDEX;\n",
            "migrations/0003_drop_col.sql": "ALTER TABLE t DROP COLUMN c;\n",
        },
        "v2",
    )
    reason = gate(repo).gate.reason
    assert reason.startswith("2 migrations would be undone between v1 and HEAD: ")
    assert "migrations/0002_add_index.sql (added; backwards compatible" in reason
    assert "migrations/0003_drop_col.sql (added; not declared backwards compatible" in reason
    assert "blocked by migrations/0003_drop_col.sql;" in reason


def test_the_deploy_event_wins_over_a_marker_in_the_file(repo: Path) -> None:
    """When the deploy event says a marked file is not compatible, the rollback is blocked."""
    commit(
        repo, {"migrations/0002.sql": "-- rollbackd: backwards-compatible\nDROP TABLE u;\n"}, "v2"
    )
    report = gate(repo, facts=(MigrationFact("migrations/0002.sql", False, None),))
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert report.migrations[0].declared_by == "deploy event"
    assert report.migrations[0].changes_data is None


def test_a_marker_mid_line_or_in_a_string_does_not_declare_anything(repo: Path) -> None:
    """Only a marker comment on its own line counts; text inside SQL or strings is ignored."""
    commit(
        repo,
        {
            "migrations/0002.sql": "ALTER TABLE t ADD c int; -- rollbackd: backwards-compatible\n",
            "migrations/0003.py": 'SQL = """\n-- rollbackd: backwards-compatible\n"""\n',
            "migrations/0004.sql": "INSERT INTO n VALUES ('# rollbackd: backwards-compatible');\n",
        },
        "v2",
    )
    report = gate(repo)
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert [m.declared_by for m in report.migrations] == ["undeclared"] * 3


def test_default_globs_find_common_layouts_but_not_documentation(repo: Path) -> None:
    """Alembic, Rails, Django and Flyway migrations count; docs about migrations do not."""
    commit(
        repo,
        {
            "alembic/versions/3f2c_add_users.py": "def upgrade(): ...\n",
            "db/migrate/20240101000000_add_users.rb": "class AddUsers; end\n",
            "shop/migrations/0002_order.py": "operations = []\n",
            "src/main/resources/db/migration/V2__users.sql": "CREATE TABLE u;\n",
            "docs/migrations.md": "# How we migrate\n",
            "docs/migrations/guide.md": "Write a marker.\n",
            "migrations/README": "Generic single-database configuration.\n",
            "app/models.py": "class User: ...\n",
        },
        "v2",
    )
    found = migrations_to_undo(repo, "HEAD", "v1", DEFAULT_MIGRATION_GLOBS)
    assert found == [
        ("alembic/versions/3f2c_add_users.py", "added"),
        ("db/migrate/20240101000000_add_users.rb", "added"),
        ("shop/migrations/0002_order.py", "added"),
        ("src/main/resources/db/migration/V2__users.sql", "added"),
    ]


def test_a_migration_deleted_or_renamed_since_the_target_blocks_unless_declared(
    repo: Path,
) -> None:
    """Rolling back restores a deleted migration and undoes a rename: both need a declaration."""
    commit(repo, {"migrations/0002_old_name.sql": "CREATE TABLE a (x int);\n" * 20}, "v2")
    git(repo, "tag", "v2")
    git(repo, "mv", "migrations/0002_old_name.sql", "migrations/0002_new_name.sql")
    commit(repo, {"migrations/0001_init.sql": None}, "v3")
    assert migrations_to_undo(repo, "HEAD", "v2", DEFAULT_MIGRATION_GLOBS) == [
        ("migrations/0001_init.sql", "deleted"),
        ("migrations/0002_new_name.sql", "renamed"),
    ]
    report = gate(repo, "v2", (MigrationFact("migrations/0002_old_name.sql", True, False),))
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert "blocked by migrations/0001_init.sql;" in report.gate.reason
    assert report.migrations[1].declared_by == "deploy event"


def test_a_file_named_by_the_deploy_event_counts_wherever_it_lives(repo: Path) -> None:
    """A migration outside the globs is still checked when the deploy event names it."""
    commit(repo, {"schema/changes/002.py": "run('DROP TABLE t')\n"}, "v2")
    assert gate(repo).gate.verdict is GateVerdict.PROCEED
    fact = MigrationFact("schema/changes/002.py", False, True)
    report = gate(repo, facts=(fact,))
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert "schema/changes/002.py (added; not declared backwards compatible, changes data: yes" in (
        report.gate.reason
    )


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every git argv rollbackd runs during the test."""
    calls: list[list[str]] = []
    original = process.run

    def recording(argv: Sequence[str], **kwargs: Any) -> process.Finished:
        if argv[:1] == ["git"]:
            calls.append([str(part) for part in argv])
        return original(argv, **kwargs)

    monkeypatch.setattr(process, "run", recording)
    yield calls


@pytest.mark.parametrize(
    "template", ["--output={tmp}/written", "$(touch {tmp}/pwned)", "v1..HEAD", "-", "HEAD@{1}"]
)
def test_a_hostile_target_is_blocked_and_never_reaches_git(
    repo: Path, tmp_path: Path, template: str, git_calls: list[list[str]]
) -> None:
    """A target that git could read as an option or a command is refused with a clear reason."""
    commit(repo, {"migrations/0002.sql": "-- rollbackd: backwards-compatible\n"}, "v2")
    target = template.replace("{tmp}", str(tmp_path))
    report = gate(repo, target)
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert f"the target {target!r} is not a valid git ref" in report.gate.reason
    assert "so it was not passed to git" in report.gate.reason
    assert NOT_DONE in report.gate.reason
    assert git_calls == []  # refused before any git command ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web"]


def test_an_unknown_target_is_blocked_saying_it_is_not_a_commit(
    repo: Path, git_calls: list[list[str]]
) -> None:
    """A target that does not exist in the repository blocks the rollback instead of failing."""
    report = gate(repo, "v9")
    assert report.gate.verdict is GateVerdict.BLOCKED
    assert "the target 'v9' is not a commit in " in report.gate.reason
    assert "the gate fails closed" in report.gate.reason
    assert any(call[-2:] == ["--end-of-options", "v9^{commit}"] for call in git_calls)


def test_a_path_that_is_not_a_repository_is_blocked(tmp_path: Path) -> None:
    """A missing or non-git working copy blocks the rollback: the gate fails closed."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for path, why in ((plain, "is not a git repository"), (tmp_path / "absent", "does not exist")):
        report = gate(path)
        assert report.gate.verdict is GateVerdict.BLOCKED
        assert f"{path} {why}" in report.gate.reason
        assert NOT_DONE in report.gate.reason
        assert report.migrations == ()


def test_describe_gives_one_line_per_migration(repo: Path) -> None:
    """People see each migration on its own line with its change and declarations."""
    commit(
        repo,
        {
            "migrations/0002.sql": "-- rollbackd: backwards-compatible\n",
            "migrations/0003.sql": "DROP TABLE t;\n",
        },
        "v2",
    )
    assert gate(repo).describe().splitlines() == [
        "migrations/0002.sql (added): backwards compatible, changes data: no; per marker in file",
        "migrations/0003.sql (added): NOT backwards compatible, changes data: unknown; undeclared",
    ]


# --- pure: the verdict ---------------------------------------------------------------------------


def migration(
    file: str, compatible: bool, data: bool | None, declared_by: str = "marker in file"
) -> Migration:
    return Migration(file, compatible, data, declared_by, "added")


def test_decide_gate_proceeds_when_there_is_no_migration() -> None:
    """Nothing to undo in the schema means the code rollback goes ahead."""
    verdict = decide_gate([], target="v1")
    assert (verdict.verdict, verdict.reason) == (
        GateVerdict.PROCEED,
        "no migration between v1 and HEAD",
    )


def test_decide_gate_proceeds_when_all_are_compatible_without_data_changes() -> None:
    """Compatible schema-only migrations let the rollback go ahead, listed in the reason."""
    verdict = decide_gate([migration("a.sql", True, False), migration("b.sql", True, False)])
    assert verdict.verdict is GateVerdict.PROCEED
    assert verdict.reason.startswith("2 migrations would be undone in this rollback, all declared")


@pytest.mark.parametrize(
    ("migrations", "tree"),
    [
        ([migration("a.sql", True, True)], "data changes are involved"),
        (
            [migration("a.sql", False, None, "undeclared")],
            "whether data changes are involved is unknown",
        ),
        (
            [migration("a.sql", False, False)],
            "no data changes are declared, so a forward fix may be better",
        ),
        ([migration("a.sql", True, None)], "whether data changes are involved is unknown"),
    ],
)
def test_decide_gate_blocks_and_follows_the_playbook_decision_tree(
    migrations: list[Migration], tree: str
) -> None:
    """A blocked rollback says whether data changes are involved, as the playbook asks."""
    verdict = decide_gate(migrations)
    assert verdict.verdict is GateVerdict.BLOCKED
    assert f"blocked by a.sql; {tree}; {NOT_DONE}; consult the database role" in verdict.reason


# --- pure: markers and globs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-- rollbackd: backwards-compatible\nALTER TABLE t ADD c int;\n", (True, False)),
        ("  --   ROLLBACKD :Backwards-Compatible  \r\n", (True, False)),
        ("# rollbackd: changes-data\n", (False, True)),
        ("// rollbackd: backwards compatible\n", (True, False)),
        ("/* rollbackd: backwards-compatible */\n", (True, False)),
        ("<!-- rollbackd: backwards-compatible -->\n", (True, False)),
        ("/*\n * rollbackd: backwards-compatible\n * rollbackd: changes-data\n */\n", (True, True)),
        ("-- don't panic\n-- rollbackd: backwards-compatible\n", (True, False)),
        ("ALTER TABLE t ADD c int; -- rollbackd: backwards-compatible\n", (False, False)),
        ("/* rollbackd: backwards-compatible */ DROP TABLE t;\n", (False, False)),
        ("SELECT '-- rollbackd: backwards-compatible';\n", (False, False)),
        ('SQL = """\n# rollbackd: backwards-compatible\n"""\n', (False, False)),
        ("knex.raw(`\n-- rollbackd: backwards-compatible\n`)\n", (False, False)),
        ("AS $$\n-- rollbackd: backwards-compatible\n$$;\n", (False, False)),
        ("-- rollbackd: not backwards-compatible\n", (False, False)),
        ("-- rollbackd: backwards-incompatible\n", (False, False)),
        ("rollbackd: backwards-compatible\n", (False, False)),
    ],
)
def test_read_markers_counts_only_markers_in_comments_on_their_own_line(
    text: str, expected: tuple[bool, bool]
) -> None:
    """A declaration counts only as a comment on its own line, never in code, strings or prose."""
    assert read_markers(text) == expected


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("migrations/0001.sql", "migrations/**", True),
        ("migrations/a/b/0001.sql", "migrations/**", True),
        ("migrations", "migrations/**", False),
        ("app/migrations/0001.py", "migrations/**", False),
        ("app/migrations/0001.py", "**/migrations/**", True),
        ("migrations/0001.py", "**/migrations/**", True),
        ("q.sql", "**/*.sql", True),
        ("a/b/q.sql", "**/*.sql", True),
        ("a/b/q.sql", "*.sql", False),
        ("a/x/y/b/c", "a/**/b/*", True),
        ("a/b/c", "a/**/b/*", True),
        ("Migrations/1.cs", "**/migrations/**", False),
    ],
)
def test_glob_match_honours_double_star_and_never_crosses_a_slash_with_star(
    path: str, pattern: str, expected: bool
) -> None:
    """Globs match whole paths like .gitignore: ** spans directories, * stays within one."""
    assert glob_match(path, pattern) is expected


def test_exclusions_keep_documentation_out_of_the_default_globs() -> None:
    """Docs next to migrations are not migrations; any SQL file is, to err towards blocking."""
    assert not is_migration("docs/migrations.md", DEFAULT_MIGRATION_GLOBS)
    assert not is_migration("migrations/README.md", DEFAULT_MIGRATION_GLOBS)
    assert is_migration("docs/example.sql", DEFAULT_MIGRATION_GLOBS)
    assert is_migration("prisma/migrations/20240101_init/migration.sql", DEFAULT_MIGRATION_GLOBS)
    assert is_migration(
        "src/main/resources/db/changelog/db.changelog-master.yaml", DEFAULT_MIGRATION_GLOBS
    )
