"""The four agents (monitor, diagnostician, remediator, governor), the incident graph and its state.

Layer: agents. Imports policies, knowledge and tools (engines and adapters), `infra` and `core`; never the
sandbox. The interfaces (`opsmedic`: CLI, daemon, chat, eval) drive the graph through `agents.driver`.
"""
