"""In-band IPMI as docs/operations.md sets it up for the shipped systemd unit: the udev rule and the
drop-in must together let the agent's group open /dev/ipmi0 the way ipmitool does (read-write)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPS = (REPO / "docs" / "operations.md").read_text()
UNIT = (REPO / "systemd" / "greenwatch-agent.service").read_text()


def test_the_documented_udev_rule_gives_the_group_read_and_write():
    rule = re.search(r'KERNEL=="ipmi0", GROUP="([^"]+)", MODE="(0?[0-7]{3})"', OPS)
    assert rule is not None, "docs/operations.md has no udev rule for ipmi0"
    group_bits = int(rule.group(2)[-2])
    assert group_bits & 0o6 == 0o6, f"MODE={rule.group(2)}: ipmitool opens the device read-write"
    assert int(rule.group(2)[-1]) == 0, "other users must not reach the BMC"


def test_the_documented_drop_in_admits_the_device_the_unit_closes():
    group = re.search(r'KERNEL=="ipmi0", GROUP="([^"]+)"', OPS)
    assert group is not None
    assert re.search(r"^DevicePolicy=closed$", UNIT, re.M), "the unit's device policy changed: revisit this check"
    drop_in = re.search(r"```ini\n\s*\[Service\]\n(.*?)```", OPS[OPS.index('KERNEL=="ipmi0"'):], re.S)
    assert drop_in is not None, "no drop-in beside the udev rule"
    lines = [line.strip() for line in drop_in.group(1).splitlines()]
    assert f"SupplementaryGroups={group.group(1)}" in lines
    assert "DeviceAllow=char-ipmidev rw" in lines
