"""One line of migrations: exactly one head and no branch or merge anywhere. Two changes that each
add a migration on the same parent would leave two heads, and `open_store` would not know which
to upgrade to; a merge migration would hide the fork but keep two orders of applying them."""

from __future__ import annotations

import shutil
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from gated.billing_sync.store import HEAD_REVISION, MIGRATIONS, alembic_config


def history_problems(script: ScriptDirectory) -> list[str]:
    """Why the migrations are not one straight line from one base to one head ([] if they are)."""
    problems = []
    heads = script.get_heads()
    if len(heads) != 1:
        problems.append(f"{len(heads)} heads: {', '.join(sorted(heads))}")
    bases = script.get_bases()
    if len(bases) != 1:
        problems.append(f"{len(bases)} bases: {', '.join(sorted(bases))}")
    for rev in script.walk_revisions():
        if rev.is_merge_point:
            problems.append(f"{rev.revision} merges {', '.join(rev.down_revision or ())}")
        if rev.is_branch_point:
            problems.append(f"{rev.revision} is the parent of {', '.join(sorted(rev.nextrev))}")
    return problems


def test_the_shipped_migrations_are_one_line_to_the_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert history_problems(script) == []
    assert script.get_current_head() == HEAD_REVISION
    # Every file in versions/ is on that line.
    files = [p for p in (MIGRATIONS / "versions").glob("*.py") if not p.name.startswith("_")]
    assert len(list(script.walk_revisions())) == len(files)


MIGRATION = '''"""{doc}"""
revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def scripts_with(tmp_path: Path, extra: dict[str, str | tuple[str, ...]]) -> ScriptDirectory:
    """The shipped migrations plus ``extra`` (revision → its down revision(s))."""
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, location, ignore=shutil.ignore_patterns("__pycache__"))
    for rev, down in extra.items():
        text = MIGRATION.format(doc=f"test revision {rev}", rev=rev, down=down)
        (location / "versions" / f"{rev}_test.py").write_text(text)
    config = Config()
    config.set_main_option("script_location", str(location))
    return ScriptDirectory.from_config(config)


def test_two_migrations_on_one_parent_are_caught(tmp_path: Path) -> None:
    script = scripts_with(tmp_path, {"9001": HEAD_REVISION, "9002": HEAD_REVISION})
    assert history_problems(script) == [
        "2 heads: 9001, 9002",
        f"{HEAD_REVISION} is the parent of 9001, 9002",
    ]


def test_a_merge_migration_does_not_hide_the_fork(tmp_path: Path) -> None:
    script = scripts_with(
        tmp_path, {"9001": HEAD_REVISION, "9002": HEAD_REVISION, "9003": ("9001", "9002")}
    )
    problems = history_problems(script)
    assert len(script.get_heads()) == 1
    assert problems == ["9003 merges 9001, 9002", f"{HEAD_REVISION} is the parent of 9001, 9002"]
