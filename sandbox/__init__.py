"""The simulated GPU cluster: scenario contract, nodes/GPUs/pods/models, faults and action effects.

Layer: sandbox. Imports only `core` and itself; only the sandbox adapters in `tools` (named in pyproject's
import-linter contracts), the interfaces that run scenarios, and tests import it.
"""
