"""What each command loads: the agent and the Slurm hooks never load numba.

numba and llvmlite add about 60 MiB to a process and seconds to its start; the agent runs on
every GPU node and the hooks within a second's deadline, and neither needs the attribution kernels.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from greenwatch import cli
cli.build_parser()
import {module}
print(sorted(m for m in ("numba", "llvmlite") if m in sys.modules))
"""


@pytest.mark.parametrize("module", ["greenwatch.agent.service", "greenwatch.agent.slurm",
                                    "greenwatch.agent.slurm_cli"])
def test_the_agent_and_the_hooks_never_load_numba(module):
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} (with every command's parser) loads {out.stdout.strip()}"
