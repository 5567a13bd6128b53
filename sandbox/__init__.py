"""The simulated GPU cluster: scenario contract, nodes/GPUs/pods/models, faults and action effects.

Layer: sandbox. Imports only `core.domain`, `core.errors` and itself; only tools' sandbox
backends, the interfaces that run scenarios, and tests import it.
"""
