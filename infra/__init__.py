"""Shared infrastructure, one layer above `core`: the database seam (`infra.db`: SQLite or Postgres) and
opsmedic's own telemetry (`infra.tracing`: OpenTelemetry spans, Prometheus metrics about opsmedic).

It imports only `core` and third-party packages; the engines, adapters, agents and interfaces above use it.
"""
