"""NVIDIA's XID catalog, loaded once from `core/data/xid_catalog.yaml`: the one copy of what each XID means.

Layer: bottom (beside `core.domain`): it depends on nothing of ours but the domain's vocabularies, and the
monitor, the diagnostician, the sandbox and the console all read XIDs through it, so that adding or
re-bucketing a code is an edit to the data file alone.

Two readings of a code, both following SCENARIOS.md ("XIDs"):

- `effect(code, recovery)`: what the XID does to the GPU (the sandbox simulates it, the console colours it).
  The catalog's *immediate action* bucket decides; XID 154's recovery overrides the bucket of the XID it
  accompanies on the same GPU.
- `root_cause(code, recovery)`: the root-cause label the diagnostician gives it (by family first: ECC, fell
  off the bus, NVLink; then by bucket). A code the catalog does not list is `unknown`, never `healthy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.domain import RootCause
from core.errors import OpsmedicError

Bucket = Literal[
    "RESTART_APP", "RESET_GPU", "RESTART_BM", "RESTART_VM", "IGNORE", "CHECK_MECHANICALS", "CHECK_UVM",
    "UPDATE_SWFW", "UNEXPECTED_ERR_REPORT_ISSUE", "WORKFLOW_XID_45", "WORKFLOW_XID_48", "WORKFLOW_NVLINK_ERR",
    "WORKFLOW_NVLINK5_ERR", "FOLLOW_RECOVERY_ACTION",
]
Recovery = Literal["none", "gpu_reset", "node_reboot", "drain_p2p", "drain_and_reset"]
RECOVERIES: tuple[str, ...] = get_args(Recovery)
# What an XID does to the GPU, as the sandbox simulates it (SCENARIOS.md, "XIDs"):
#   restart_app  the process on the GPU dies, its pod must restart; the GPU stays healthy
#   reset_gpu    the GPU serves no work until it is reset
#   restart_bm   the GPU is gone from NVML until the node reboots
#   ecc_dbe      XID 48's workflow: a double-bit ECC error, then a reset
#   nvlink       NVLink CRC / replay counters climb
#   node_reboot  (XID 154 node_reboot) the GPU stays failed until the node reboots; no reset helps
#   ignore       the catalog's IGNORE: an event; the GPU keeps working
#   event        anything else (contact support, check mechanicals, unlisted codes): an event only
Effect = Literal["restart_app", "reset_gpu", "restart_bm", "ecc_dbe", "nvlink", "node_reboot", "ignore", "event"]
Family = Literal["ecc", "nvlink"]
# the GPU families the catalog's "Applies to" columns name
GpuFamily = Literal["A100", "H100", "B100", "GB200"]

RECOVERY_XID = 154
# SCENARIOS.md: "43 and 45 behave the same [as RESTART_APP] here (the catalog: IGNORE, and cleanup after
# another XID)" — both are what an application sees when its channel is torn down.
_APP_LIKE = frozenset({43, 45})
_BUCKET_EFFECT: dict[str, Effect] = {
    "RESTART_APP": "restart_app",
    "WORKFLOW_XID_45": "restart_app",
    "RESET_GPU": "reset_gpu",
    "RESTART_BM": "restart_bm",
    "WORKFLOW_XID_48": "ecc_dbe",
    "WORKFLOW_NVLINK_ERR": "nvlink",
    "WORKFLOW_NVLINK5_ERR": "nvlink",
    "IGNORE": "ignore",
}
_RECOVERY_EFFECT: dict[str, Effect | None] = {
    "none": None,  # adds nothing: the accompanying XID's own bucket stands
    "gpu_reset": "reset_gpu",
    "drain_p2p": "reset_gpu",
    "drain_and_reset": "reset_gpu",
    "node_reboot": "node_reboot",
}
# the effects that leave the GPU unable to serve work (the console's "failed")
FAILING_EFFECTS: frozenset[Effect] = frozenset({"reset_gpu", "restart_bm", "ecc_dbe", "node_reboot"})


class CatalogError(OpsmedicError):
    """The XID catalog data file is malformed."""


class XidEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: int = Field(ge=1)
    mnemonic: str
    immediate_action: Bucket
    fatal: bool
    family: Family | None = None
    what: str | None = None
    # the catalog page's columns: where the code applies, what to investigate if it recurs, and the driver
    # release from which it also raises XID 154 (data for people and the console; no rule keys on them)
    gpus: list[GpuFamily] = Field(default_factory=list)
    investigatory: str | None = None
    xid154_linkage: str | None = None

    def describe(self, where: str | None = None) -> str:
        name = self.what or self.mnemonic.replace("_", " ").lower() or "no mnemonic"
        on = f" on {where}" if where else ""
        inv = f", then {self.investigatory}" if self.investigatory and not self.investigatory.startswith("N/A") else ""
        return f"XID {self.code}{on} ({name}; catalog: {self.immediate_action}{inv})"


class XidCatalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    via: str
    retrieved: str
    xids: list[XidEntry]

    def by_code(self) -> dict[int, XidEntry]:
        return {e.code: e for e in self.xids}


@dataclass(frozen=True)
class XidReading:
    """One XID read through the catalog (with XID 154's recovery where one accompanies it)."""

    code: int
    entry: XidEntry | None
    effect: Effect
    root_cause: RootCause
    recovery: str | None = None

    @property
    def listed(self) -> bool:
        return self.entry is not None

    def describe(self, where: str | None = None) -> str:
        """`XID 79 on node-1/gpu-3 (GPU has fallen off the bus; catalog: RESTART_BM)`: the code and where it
        happened first, as engineers (and the chat's evidence answers) quote it."""
        on = f" on {where}" if where else ""
        text = (self.entry.describe(where) if self.entry
                else f"XID {self.code}{on} (not in NVIDIA's XID catalog)")
        return text + (f"; XID 154 requires {self.recovery}" if self.recovery not in (None, "none") else "")


def _parse(text: str, where: str) -> XidCatalog:
    try:
        cat = XidCatalog.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise CatalogError(f"{where}: not a valid XID catalog: {exc}") from exc
    codes = [e.code for e in cat.xids]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise CatalogError(f"{where}: XID codes listed twice: {dupes}")
    return cat


@lru_cache(maxsize=1)
def catalog() -> XidCatalog:
    """The bundled catalog (read once per process)."""
    path = resources.files("core").joinpath("data", "xid_catalog.yaml")
    return _parse(path.read_text(encoding="utf-8"), "core/data/xid_catalog.yaml")


@lru_cache(maxsize=1)
def _entries() -> dict[int, XidEntry]:
    return catalog().by_code()


def entry(code: int) -> XidEntry | None:
    return _entries().get(code)


def codes() -> list[int]:
    """Every catalogued code, ascending."""
    return sorted(_entries())


def effect(code: int, recovery: str | None = None) -> Effect:
    """What `code` does to the GPU; `recovery` is XID 154's, when one accompanies `code` on the same GPU."""
    override = _RECOVERY_EFFECT.get(recovery or "none")
    if override is not None:
        return override
    e = entry(code)
    if e is None or code == RECOVERY_XID:
        return "event"
    if code in _APP_LIKE:
        return "restart_app"
    return _BUCKET_EFFECT.get(e.immediate_action, "event")


def root_cause(code: int, recovery: str | None = None) -> RootCause:
    """The root-cause label for `code` (SCENARIOS.md: by family whatever the bucket; then by bucket)."""
    e = entry(code)
    if recovery == "node_reboot":
        return "node_reboot_required"
    if e is not None and e.family == "ecc":
        return "gpu_uncorrectable_ecc"
    if e is not None and e.family == "nvlink":
        return "nvlink_errors"
    eff = effect(code, recovery)
    if eff == "restart_bm":
        return "gpu_fell_off_bus"
    if eff == "reset_gpu":
        return "gpu_reset_required"
    if eff == "restart_app":
        return "gpu_app_error"
    # IGNORE codes that repeat past the policy's rate, the catalog's "contact support" / check buckets, and
    # codes it does not list: nothing known to fix, so a person looks (escalated, never "healthy")
    return "unknown"


def read(code: int, recovery: str | None = None) -> XidReading:
    return XidReading(code, entry(code), effect(code, recovery), root_cause(code, recovery), recovery)


def is_ignorable(code: int) -> bool:
    """The catalog says IGNORE (and SCENARIOS.md does not treat it as an application fault): recorded, and an
    incident only when it repeats past the policy's rate."""
    return effect(code) == "ignore"
