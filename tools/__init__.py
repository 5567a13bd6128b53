"""Every tool the agents may call: read tools (telemetry) and action tools, declared in one registry.

Layer: engines and adapters. Imports only `core.domain`, `core.errors` and (for the sandbox
backend) `sandbox`.
"""
