"""The four agents (monitor, diagnostician, remediator, governor), the incident graph and its state.

Layer: agents. Imports policies, knowledge and tools (engines and adapters) and opsmedic's domain
models; never the sandbox. The interfaces (CLI, daemon, chat, eval) drive the graph.
"""
