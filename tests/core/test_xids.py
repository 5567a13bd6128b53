"""The XID catalog module: the bundled data (every code with its bucket, source and date), the contract's
buckets and families (SCENARIOS.md, "XIDs"), XID 154's override, a malformed file's clear error, and the one
copy: no other module keeps its own XID table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import xids
from core.domain import GpuSample, NodeStatus
from opsmedic.console.views import FAILED, gpu_health

REPO = Path(__file__).resolve().parents[2]


def test_the_bundled_catalog_names_its_source_and_lists_every_code() -> None:
    cat = xids.catalog()
    assert cat.source.startswith("https://docs.nvidia.com/") and "NVSentinel" in cat.via
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cat.retrieved)
    assert xids.codes() == list(range(1, 163))
    assert xids.entry(79) is not None and xids.entry(79).mnemonic == "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS"
    assert xids.entry(250) is None


@pytest.mark.parametrize(("codes", "effect"), [
    ((8, 13, 31, 68, 69, 94), "restart_app"),
    ((43, 45), "restart_app"),  # SCENARIOS.md treats them as application faults
    ((62, 64, 95, 109, 110, 119, 120, 136, 140, 143, 156, 158), "reset_gpu"),
    ((79, 160), "restart_bm"),
    ((48,), "ecc_dbe"),
    ((63, 92), "ignore"),
    ((74,), "nvlink"),
    ((250, 1), "event"),  # unlisted; the catalog's "contact support"
])
def test_buckets_as_scenarios_md_names_them(codes: tuple[int, ...], effect: str) -> None:
    assert {c: xids.effect(c) for c in codes} == dict.fromkeys(codes, effect)


def test_xid_154_overrides_the_bucket_it_accompanies() -> None:
    assert xids.effect(13, "node_reboot") == "node_reboot"
    assert {xids.effect(13, r) for r in ("gpu_reset", "drain_p2p", "drain_and_reset")} == {"reset_gpu"}
    assert xids.effect(13, "none") == "restart_app"
    assert xids.root_cause(109, "node_reboot") == "node_reboot_required"
    assert xids.root_cause(13, "gpu_reset") == "gpu_reset_required"
    assert xids.root_cause(94, "gpu_reset") == "gpu_uncorrectable_ecc"  # the family stays; the plan resets
    assert xids.effect(154) == "event" and xids.root_cause(154, "node_reboot") == "node_reboot_required"


def test_no_catalogued_code_is_healthy() -> None:
    assert "healthy" not in {xids.root_cause(c) for c in [*xids.codes(), 250]}


def test_a_malformed_catalog_is_refused_with_its_name() -> None:
    with pytest.raises(xids.CatalogError, match=r"bad\.yaml: not a valid XID catalog"):
        xids._parse("source: x\nvia: y\nretrieved: z\nxids: [{code: 1, mnemonic: A, immediate_action: NAP}]",
                    "bad.yaml")
    with pytest.raises(xids.CatalogError, match=r"listed twice: \[7\]"):
        row = "{code: 7, mnemonic: A, immediate_action: IGNORE, fatal: false}"
        xids._parse(f"source: x\nvia: y\nretrieved: z\nxids: [{row}, {row}]", "dup.yaml")


def test_the_console_colours_a_gpu_by_the_catalog() -> None:
    node = NodeStatus(name="node-0", ready=True)
    g = GpuSample(gpu="node-0/gpu-0", node="node-0", index=0, xids=[119])
    assert gpu_health(g, node) == (FAILED, "XID 119")
    assert gpu_health(g.model_copy(update={"xids": [137]}), node)[0] != FAILED
    reboot = g.model_copy(update={"xids": [154], "recovery_action": "node_reboot"})
    assert gpu_health(reboot, node)[0] == FAILED


def test_only_the_catalog_module_keeps_an_xid_table() -> None:
    """A set or dict literal of XID codes anywhere else would be a second copy to drift."""
    table = re.compile(r"(XID|xid)\w*\s*[:=][^#]*[{(\[]\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\b")
    offenders = []
    for pkg in ("agents", "opsmedic", "sandbox", "tools", "knowledge", "policies"):
        for path in (REPO / pkg).rglob("*.py"):
            if path.name == "xids.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if table.search(line) and not line.lstrip().startswith("#"):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_catalog_carries_the_pages_gpu_families_and_investigatory_buckets() -> None:
    """Transcribed from NVIDIA's catalog page ("Applies to", "Investigatory Action", "Xid 154 linkage")."""
    e119, e74, e136, e1 = (xids.entry(c) for c in (119, 74, 136, 1))
    assert e119 is not None and e119.gpus == ["A100", "H100", "B100", "GB200"]
    assert e119.investigatory == "INVESTIGATE_SW" and "INVESTIGATE_SW" in e119.describe()
    assert e74 is not None and e74.gpus == ["A100", "H100"]  # NVLink 4 and older; 144-150 on Blackwell
    assert e136 is not None and e136.gpus == ["H100"]
    assert e1 is not None and e1.gpus == [] and e1.investigatory == "N/A; Unused"
    assert {c for c in xids.codes() if (e := xids.entry(c)) and e.xid154_linkage} >= {48, 62, 63, 64, 79, 94, 95}
    assert {xids.entry(c).investigatory for c in range(144, 151)} == {"WORKFLOW_NVLINK5_ERR"}  # type: ignore[union-attr]
    assert len([c for c in xids.codes() if xids.entry(c).gpus]) == 99  # type: ignore[union-attr]
