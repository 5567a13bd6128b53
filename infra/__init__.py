"""Shared infrastructure, one layer above `core`: the database seam (`infra.db`: SQLite or Postgres),
opsmedic's own telemetry (`infra.tracing`: OpenTelemetry spans, Prometheus metrics about opsmedic) and the
recorded H100 NVML readings with their loader (`infra.nvml_trace`, data in `infra/data/`).

It imports only `core` and third-party packages; the engines, adapters, agents and interfaces above use it.
"""
