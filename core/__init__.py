"""opsmedic's vocabulary: the bottom layer.

Domain models (`core.domain`), the exception tree (`core.errors`), settings (`core.settings`), the action
catalogue (`core.actions`), NVIDIA's XID catalogue (`core.xids`), the metric names (`core.metric_names`), the
clocks (`core.clock`) and the YAML loader with limits (`core.safe_yaml`). Nothing here performs network or
database I/O, and nothing here imports any other opsmedic package: every other layer stands on this one
(see docs/ARCHITECTURE.md).
"""
