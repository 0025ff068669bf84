"""``greenwatch.track`` on one MIG device of a shared board: charged its share of the board, not the board.

A real Python process runs ``track`` over the mock NVML: an H100 in MIG mode at a constant
``POWER_W``, the run's own process on a 3-slice MIG device at ``RUN_SM`` % SM activity, a foreign
process (not in the run's tree) on a 2-slice device at ``OTHER_SM`` %, an idle 1-slice device and
one slice not partitioned.  The run holds its MIG device by its process (first case) or because
``CUDA_VISIBLE_DEVICES`` names it by its MIG UUID (second case).

The truth is computed here from the scenario alone, by the rule of docs/methodology.md, 3a: at
every instant the board's idle baseline (``idle_power_w``, 60 W by default) goes to the devices by
slice share of the board, the rest by busy slices (slices x activity).  At constant power and
activity the run's share of the board is a constant fraction, so the run's GPU energy is compared
with that fraction of the board energy the same run measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from greenwatch.standalone.gpus import select_visible, shared_note
from greenwatch.storage.embedded import EmbeddedStore
from mocknvml import build_mock_nvml, make_mig_uuid, make_uuid, mock_env
from run_helpers import REPO, report_of

pytestmark = pytest.mark.mig

POWER_W = 400.0
IDLE_W = 60.0
RUN_SM, OTHER_SM = 60, 30
RUN_SLICES, OTHER_SLICES, IDLE_SLICES, BOARD_SLICES = 3, 2, 1, 7
FOREIGN_PID = 4_000_001   # no process of this machine: outside the run's tree

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from mocknvml import Constant, GpuSpec, MigSpec, ProcSpec, Scenario
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, mig=True, power=[Constant(-600.0, 600.0, {power})])],
                  migs=[MigSpec(0, gi=1, slices=3), MigSpec(0, gi=2, slices=2), MigSpec(0, gi=5, slices=1)],
                  processes=[ProcSpec(os.getpid(), 0, sm_util={run_sm}, gi=1, ci=0),
                             ProcSpec({foreign}, 0, sm_util={other_sm}, gi=2, ci=0)])
    sc.write({scn!r})
    if {visible!r}:
        os.environ["CUDA_VISIBLE_DEVICES"] = {visible!r}
    import greenwatch
    with greenwatch.track("slice", out={out!r}, window_s=1.0) as run:
        time.sleep(3.0)
    print(json.dumps({{"board": sc.gpu(0).resolved_uuid, "gpu_kwh": run.result.energy_kwh["gpu"]}}))
""")


def truth_fraction() -> float:
    """The run's share of the board's energy, from the scenario and the rule of docs/methodology.md 3a."""
    busy_run, busy_other = RUN_SLICES * RUN_SM, OTHER_SLICES * OTHER_SM   # the idle device has no busy slices
    share_w = IDLE_W * RUN_SLICES / BOARD_SLICES + (POWER_W - IDLE_W) * busy_run / (busy_run + busy_other)
    return share_w / POWER_W


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_mock_nvml()


def run_on_slice(tmp_path: Path, lib_dir: Path, visible: str = "") -> tuple[dict, dict, float, float]:
    """Run the script; its output, its report, the run's and the board's measured GPU energy (J)."""
    scn, out = tmp_path / "node.scn", tmp_path / "run"
    env = mock_env(lib_dir, scn)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    code = SCRIPT.format(tests=str(REPO / "tests"), scn=str(scn), out=str(out), power=POWER_W, run_sm=RUN_SM,
                         other_sm=OTHER_SM, foreign=FOREIGN_PID, visible=visible)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = report_of(out)
    store = EmbeddedStore(out / "greenwatch.sqlite")
    try:
        run_j = sum(float(p["energy_j"]) for p in store.points("job_energy", job="slice"))
        board_j = sum(float(p["gpu_energy_j"]) for p in store.points("node_energy"))
    finally:
        store.close()
    return got, doc, run_j, board_j


def check_share(got: dict, doc: dict, run_j: float, board_j: float) -> None:
    assert board_j > 2.0 * POWER_W   # seconds of the board were measured
    assert run_j == pytest.approx(got["gpu_kwh"] * 3.6e6, rel=1e-9)
    assert abs(run_j / board_j - truth_fraction()) <= 0.01 * truth_fraction(), (run_j / board_j, truth_fraction())
    # The report names the MIG device and says the split is estimated.
    mine = make_mig_uuid(got["board"], 1, 0)
    methods = " ".join(g["energy_method"] for g in doc["gpus"])
    assert f"on MIG device {mine}" in methods and "estimated" in methods, methods
    assert make_mig_uuid(got["board"], 2, 0) not in methods


def test_a_run_on_a_mig_device_is_charged_its_share_of_the_board(tmp_path, lib_dir):
    check_share(*run_on_slice(tmp_path, lib_dir))


def test_cuda_visible_devices_naming_a_mig_device_holds_that_device_alone(tmp_path, lib_dir):
    # The board's UUID is the mock's default for index 0; the MIG UUID is derived from it as the mock does.
    check_share(*run_on_slice(tmp_path, lib_dir, visible=make_mig_uuid(make_uuid("mock", 0), 1, 0)))


class Board:
    """What select_visible and shared_note read of a GPU device."""

    def __init__(self, index: int, uuid: str) -> None:
        self.index, self.uuid, self.name = index, uuid, "NVIDIA H100 80GB HBM3"


BOARDS = [Board(0, "GPU-aaaa"), Board(1, "GPU-bbbb")]
MIGS = {"GPU-aaaa": ["MIG-1111-x", "MIG-1122-y"], "GPU-bbbb": ["MIG-2222-z"]}


@pytest.mark.parametrize("value, boards, held, warns", [
    ("MIG-2222-z", [1], ["MIG-2222-z"], 0),                          # the board is sampled, the device held
    ("MIG-1111-x,MIG-1122-y", [0], ["MIG-1111-x", "MIG-1122-y"], 0),  # two devices of one board
    ("MIG-2222", [1], ["MIG-2222-z"], 0),                            # a unique prefix, as for GPU- UUIDs
    ("MIG-11,1", [1], ["GPU-bbbb"], 1),                              # ambiguous: skipped with a warning
    ("MIG-9999,0", [0], ["GPU-aaaa"], 1),                            # no such device here: skipped
    ("0", [0], ["GPU-aaaa"], 0),                                     # the board itself is held whole
])
def test_cuda_visible_devices_selects_mig_devices_by_uuid(value, boards, held, warns):
    chosen, got_held, warnings = select_visible(value, BOARDS, MIGS)
    assert [d.index for d in chosen] == boards
    assert got_held == held
    assert len(warnings) == warns, warnings


def test_the_note_on_a_shared_mig_device_names_it_and_its_rule():
    note = shared_note(BOARDS, {"MIG-2222-z"})
    assert "MIG device MIG-2222-z" in note and "section 3a" in note and "GPU 1" not in note
    both = shared_note(BOARDS, {"GPU-aaaa", "MIG-2222-z"})
    assert both.startswith("GPU 0 also ran") and "MIG device MIG-2222-z" in both
