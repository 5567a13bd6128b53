"""Every tool the agents may call: read tools (telemetry) and action tools, declared in one registry.

Layer: engines and adapters (beside `policies` and `knowledge`, independent of both). Imports `core` and
`infra`; only the sandbox adapters (`tools.sandbox_backend`, `tools.model_registry_bridge`, the MLflow
backend and training, `tools.drift_feed`'s sandbox windows) import `sandbox`: pyproject's import-linter
contracts name them.
"""
