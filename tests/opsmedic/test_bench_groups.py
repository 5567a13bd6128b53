"""`opsmedic bench`: the fleet groups run in interpreters of their own when the whole bench runs, and a
group that fails there is reported, not raised."""

from __future__ import annotations

from opsmedic import bench


def test_the_fleet_groups_are_groups_and_run_apart() -> None:
    assert set(bench.OWN_PROCESS) <= set(bench.GROUPS)


def test_a_group_that_fails_in_its_own_process_is_reported() -> None:
    got = bench._in_own_process("no-such-group")
    assert list(got) == ["no-such-group_failed"] and "unknown bench group" in got["no-such-group_failed"]
