"""Fixtures for the hostile-input suite: the throwaway Postgres server of `tests/pg.py` (skipped where
Postgres is not installed), so that every edge is tried on both database backends."""

from __future__ import annotations

import pg

pg_server = pg.pg_server
