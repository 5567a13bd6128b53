"""Runbooks: Markdown files with YAML front-matter, shipped as package data.

This package holds data only (no code): one ``*.md`` file per runbook, read by
``knowledge.runbooks.load_runbooks()`` through ``importlib.resources`` so that the runbooks travel inside
the wheel. The front-matter schema (id, title, root_causes, resource_kind, severity, signals, ordered
actions with their risk, verification, escalation, references) is defined and validated in
``knowledge/runbooks.py``; ``opsmedic runbooks lint`` checks every file here.
"""
