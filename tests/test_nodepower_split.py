"""The rest of the node split among jobs: conservation against the meter (property-tested), the
policies, and accuracy scenarios with analytic truth (node meters updating every 1 s and every
5 s, an energy counter and a power-only BMC, a meter lagging the GPU counters)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenwatch.agent.nodepower import MeterCurve, NodeReading
from greenwatch.attribution.noderest import POLICIES, allocated_shares, split_node

energy = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(meter=st.one_of(energy, st.just(0.0)), parts=st.lists(energy, max_size=12), unalloc=energy,
       raw_shares=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=12, max_size=12),
       policy=st.sampled_from(POLICIES))
def test_jobs_and_unallocated_add_up_to_the_meter_and_nothing_is_negative(meter, parts, unalloc, raw_shares, policy):
    shares = allocated_shares(raw_shares[:len(parts)], 1.0)
    s = split_node(meter, parts, unalloc, shares, policy)
    assert all(x >= 0 for x in s.job_total_j) and s.unallocated_j >= 0 and s.rest_j >= 0
    assert all(x >= 0 for x in s.job_rest_j)
    assert math.fsum([*s.job_total_j, s.unallocated_j]) == pytest.approx(meter, rel=1e-12, abs=1e-9)
    if math.fsum(parts) + unalloc <= meter:
        # The meter covers the parts: every job keeps its measured parts exactly, plus a share of the rest.
        assert all(t >= p for t, p in zip(s.job_total_j, parts))
        assert s.parts_scale == 1.0 and s.flags == ()
    else:
        assert s.flags == ("parts-exceed-meter",) and s.rest_j == 0.0


def test_policies_split_the_rest_as_documented():
    # Meter 1000 J; job parts 300 and 200; 100 J of parts unallocated: the rest is 400 J.
    by_share = split_node(1000.0, [300.0, 200.0], 100.0, [0.5, 0.25], "allocated")
    assert by_share.job_rest_j == (200.0, 100.0) and by_share.unallocated_j == pytest.approx(200.0)
    by_energy = split_node(1000.0, [300.0, 200.0], 100.0, [0.5, 0.25], "energy")
    assert by_energy.job_rest_j == pytest.approx((200.0, 400.0 / 3)) and by_energy.unallocated_j == pytest.approx(400 / 6 + 100)
    kept = split_node(1000.0, [300.0, 200.0], 100.0, [0.5, 0.25], "unallocated")
    assert kept.job_total_j == (300.0, 200.0) and kept.unallocated_j == 500.0
    without = split_node(None, [300.0, 200.0], 100.0, [0.5, 0.25])
    assert without.job_total_j == (300.0, 200.0) and without.flags == ("no-meter",)   # the parts as measured, no rest


def test_bad_input_is_refused_with_its_name():
    with pytest.raises(ValueError, match="node meter energy"):
        split_node(-1.0, [1.0], 0.0, [1.0])
    with pytest.raises(ValueError, match="job parts"):
        split_node(10.0, [math.inf], 0.0, [1.0])
    with pytest.raises(ValueError, match="policy"):
        split_node(10.0, [1.0], 0.0, [1.0], "equal")
    assert allocated_shares([3.0, 3.0], 4.0) == [0.5, 0.5]   # more than the node: scaled to the whole node


# -- accuracy: a 4-GPU node, 10 minutes, analytic truth -------------------------------------------
#
# Job A holds GPUs 0 and 1 (half the node), job B GPU 2 (a quarter), GPU 3 is idle and unallocated.
# The CPU draws 300 W (A 60 %, B 20 %, 20 % unallocated).  The rest of the node (memory, NICs,
# fans, supply losses) draws 800 W plus 0.3 W per GPU watt (fans follow the load).  The truth of
# a job is its GPU and CPU energy plus its allocated share of the rest.

WINDOW_S, RUN_S, POLL_S = 5.0, 600.0, 2.0
SHARES = [0.5, 0.25]


def gpu_w(g: int, t: float) -> float:
    if g in (0, 1):
        return 600.0 if t < 300 else 400.0
    if g == 2:
        return 300.0 + 200.0 * ((int(t) // 7) % 2)   # a 7 s square wave
    return 70.0


def parts_w(t: float) -> tuple[list[float], float, float]:
    """Job parts (W), unallocated parts (W) and the rest (W) at time t."""
    g = [gpu_w(k, t) for k in range(4)]
    jobs = [g[0] + g[1] + 0.6 * 300.0, g[2] + 0.2 * 300.0]
    return jobs, g[3] + 0.2 * 300.0, 800.0 + 0.3 * sum(g)


def integral(f, a: float, b: float, dt: float = 0.01) -> float:
    n = max(1, round((b - a) / dt))
    h = (b - a) / n
    return sum(f(a + (i + 0.5) * h) for i in range(n)) * h


def node_w(t: float) -> float:
    jobs, unalloc, rest = parts_w(t)
    return sum(jobs) + unalloc + rest


def run(refresh_s: float, counter: bool, lag_s: float = 0.0) -> list[float]:
    """Per-job energy from windows of the meter curve as the agent builds them; the BMC refreshes
    its value every ``refresh_s`` (a counter, or the mean power of its last refresh interval), the
    agent polls every 2 s and stamps readings with the poll time (Redfish gives none), and the
    meter lags the GPUs by ``lag_s``."""
    step = 0.05
    cum, t, cum_at = 0.0, -30.0, {}
    while t < RUN_S + 30:   # the meter's own energy counter on a fine grid
        cum_at[round(t, 2)] = cum
        cum += node_w(t + step / 2) * step
        t = round(t + step, 2)

    def meter_energy(t: float) -> float:
        return cum_at[round(round((t - lag_s) / step) * step, 2)]

    curve = MeterCurve("redfish", max_extrapolate_s=10)
    totals = [0.0, 0.0]
    poll = -20.0 + 0.3
    for k in range(int(RUN_S / WINDOW_S) + 1):
        end = k * WINDOW_S
        while poll <= end:
            refreshed = math.floor(poll / refresh_s) * refresh_s
            e1, e0 = meter_energy(refreshed), meter_energy(refreshed - refresh_s)
            stamp = int(poll * 1e6) + 10**15
            if counter:
                curve.add(NodeReading(stamp, energy_j=e1, power_w=(e1 - e0) / refresh_s))
            else:
                curve.add(NodeReading(stamp, power_w=(e1 - e0) / refresh_s))
            poll += POLL_S
        win = curve.window(int(end * 1e6) + 10**15)
        if k == 0:
            continue   # the window before the jobs started
        start = end - WINDOW_S
        job_parts = [integral(lambda t, j=j: parts_w(t)[0][j], start, end) for j in range(2)]
        unalloc = integral(lambda t: parts_w(t)[1], start, end)
        split = split_node(win.energy_j, job_parts, unalloc, SHARES)
        totals = [a + b for a, b in zip(totals, split.job_total_j)]
    return totals


TRUTH = [integral(lambda t, j=j: parts_w(t)[0][j] + SHARES[j] * parts_w(t)[2], 0.0, RUN_S, 0.05) for j in range(2)]


@pytest.mark.parametrize("refresh_s, counter, lag_s, tolerance", [
    (1.0, True, 0.0, 0.01),
    (5.0, True, 0.0, 0.01),
    (1.0, True, 2.0, 0.01),     # a meter lagging the GPU counters by 2 s
    (1.0, False, 0.0, 0.03),    # a power-only BMC
    (5.0, False, 0.0, 0.03),
    (5.0, False, 2.0, 0.03),
])
def test_per_job_energy_against_analytic_truth(refresh_s, counter, lag_s, tolerance):
    got = run(refresh_s, counter, lag_s)
    for job, (g, want) in enumerate(zip(got, TRUTH)):
        assert g == pytest.approx(want, rel=tolerance), f"job {job}: {g / want - 1:+.3%}"
