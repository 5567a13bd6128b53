"""`Settings.database()`: which backend `database_url` selects (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings


def test_sqlite_is_the_default() -> None:
    target = Settings().database()
    assert target.kind == "sqlite" and not target.is_postgres
    assert target.location == Path(".opsmedic/opsmedic.db")


@pytest.mark.parametrize("url", ["sqlite:///state/ops.db", "state/ops.db"])
def test_sqlite_paths_and_urls(url: str) -> None:
    target = Settings(database_url=url).database()
    assert (target.kind, target.location) == ("sqlite", Path("state/ops.db"))


@pytest.mark.parametrize("url", ["postgresql://u:p@db:5432/ops", "postgres://u:p@db:5432/ops"])
def test_postgres_urls(url: str) -> None:
    target = Settings(database_url=url).database()
    assert target.is_postgres and target.location == "postgresql://u:p@db:5432/ops"


def test_malformed_postgres_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        Settings(database_url="postgresql:ops").database()


def test_password_is_redacted_in_names() -> None:
    from infra.db import redact_url

    assert redact_url("postgresql://u:secret@db:5432/ops") == "postgresql://u:***@db:5432/ops"
    assert redact_url("postgresql://u@db/ops") == "postgresql://u@db/ops"
