"""opsmedic: autonomous, governed self-healing for GPU clusters that serve and train ML models.

The `opsmedic` package is the application shell (domain models, settings, CLI, daemon, chat); the agents,
tools, policies, knowledge and sandbox live in top-level packages beside it (see DESIGN.md).
Importing it is cheap on purpose: `opsmedic --help` must answer in well under half a second.
"""

__version__ = "0.1.0"
