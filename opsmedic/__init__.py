"""opsmedic: autonomous, governed self-healing for GPU clusters that serve and train ML models.

The `opsmedic` package is the top layer, the interfaces: the CLI, the daemon, the console, the chat, the
eval and the bench. Nothing imports it; the vocabulary (`core`), the shared plumbing (`infra`), the agents,
tools, policies, knowledge and sandbox live in top-level packages below it (see docs/ARCHITECTURE.md).
Importing it is cheap on purpose: `opsmedic --help` must answer in well under half a second.
"""

__version__ = "0.1.0"
