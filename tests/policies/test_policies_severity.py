"""An action's optional pager `severity` (issue 17): PagerDuty's four levels, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import PolicyError
from policies.model import load_policy


def test_an_action_may_name_its_pager_severity(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nactions:\n  escalate: {approval: false, severity: warning}\n")
    pol = load_policy(p)
    assert pol.action_policy("escalate").severity == "warning"
    assert pol.action_policy("notify").severity is None
    assert load_policy(None).action_policy("escalate").severity is None  # the backend's default: critical
    p.write_text("version: 1\nactions:\n  escalate: {approval: false, severity: sev1}\n")
    with pytest.raises(PolicyError, match="actions.escalate.severity"):
        load_policy(p)
