"""Test doubles, kept out of the product packages: a scriptable OpenAI-compatible server and the guard that
refuses real model requests (`fake_openai`, `llm_guard`), a Slack Web API and Events server (`fake_slack`),
a fake `pynvml` (`fake_nvml`), and a fake clock, static telemetry and a recording action backend
(`backend`). Nothing under `agents`, `tools`, `policies`, `knowledge`, `sandbox`, `core`, `infra` or
`opsmedic` imports them.
"""
