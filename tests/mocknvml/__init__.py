"""Mock ``libnvidia-ml.so.1`` for greenwatch tests.

The NVIDIA library is the only thing the project fakes: a small C library
(``mock_nvml.c``) that the *real* pynvml loads.  Typical use::

    from tests.mocknvml import build_mock_nvml, mock_env, Scenario, GpuSpec, Constant

    lib_dir = build_mock_nvml()
    sc = Scenario(t0=time.time(), gpus=[GpuSpec(0, power=[Constant(0, 60, 300.0)])])
    sc.write(tmp_path / "node.scn")
    subprocess.run([...], env=mock_env(lib_dir, tmp_path / "node.scn"))

or in-process: ``load_in_process(lib_dir)`` once, set
``GREENWATCH_MOCK_NVML_SCENARIO`` and call ``pynvml.nvmlInit()``.
See docs/mock-nvml.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

from .scenario import (
    ENV_VAR,
    Constant,
    ErrorSpec,
    GpuSpec,
    MigSpec,
    ProcSpec,
    Ramp,
    Scenario,
    Square,
    UtilPiece,
    make_mig_uuid,
    make_uuid,
    write_grace_hwmon,
)

__all__ = [
    "ENV_VAR",
    "LIB_NAME",
    "Constant",
    "ErrorSpec",
    "GpuSpec",
    "MigSpec",
    "ProcSpec",
    "Ramp",
    "Scenario",
    "Square",
    "UtilPiece",
    "build_mock_nvml",
    "load_in_process",
    "make_mig_uuid",
    "make_uuid",
    "mock_env",
    "write_grace_hwmon",
]

LIB_NAME = "libnvidia-ml.so.1"
_HERE = Path(__file__).resolve().parent
_SOURCE = _HERE / "mock_nvml.c"
_BUILD_ROOT = _HERE / "build"
_CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-shared", "-fPIC", "-fvisibility=hidden"]
_LDFLAGS = [f"-Wl,-soname,{LIB_NAME}", "-lm", "-lpthread"]


def _source_hash() -> str:
    h = hashlib.sha256(_SOURCE.read_bytes())
    h.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    return h.hexdigest()[:16]


def build_mock_nvml(out_dir: Path | None = None) -> Path:
    """Compile mock_nvml.c and return the directory holding ``libnvidia-ml.so.1``.

    Without ``out_dir`` the result is cached in ``tests/mocknvml/build/<hash>/``
    keyed by the source hash and flags; builds are atomic (safe under xdist).
    """
    digest = _source_hash()
    target_dir = Path(out_dir) if out_dir is not None else _BUILD_ROOT / digest
    lib = target_dir / LIB_NAME
    stamp = target_dir / ".mock-nvml-hash"
    if lib.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return target_dir
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("building the mock NVML needs a C compiler (gcc)")
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target_dir)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *_CFLAGS, "-o", tmp, str(_SOURCE), *_LDFLAGS],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mock NVML build failed:\n{proc.stderr}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stamp.write_text(digest + "\n")
    return target_dir


def load_in_process(lib_dir: Path) -> ctypes.CDLL:
    """Load the mock into this process so pynvml's ``CDLL("libnvidia-ml.so.1")``
    resolves to it (glibc matches already-loaded objects by DT_SONAME).

    Must run before pynvml loads any other NVML in this process.  Raises
    RuntimeError if the soname lookup does not give back the mock.
    """
    lib = ctypes.CDLL(str(Path(lib_dir) / LIB_NAME), mode=ctypes.RTLD_GLOBAL)
    by_soname = ctypes.CDLL(LIB_NAME)
    if by_soname._handle != lib._handle or not hasattr(by_soname, "greenwatchMockNvmlVersion"):
        raise RuntimeError(f"{LIB_NAME} by soname is not the mock (another NVML already loaded?)")
    try:
        import pynvml
    except ImportError:  # pragma: no cover - pynvml is a project dependency
        return lib
    loaded = getattr(pynvml, "nvmlLib", None)
    if loaded is not None and loaded._handle != lib._handle:
        raise RuntimeError("pynvml already loaded a different libnvidia-ml.so.1 in this process")
    return lib


def mock_env(
    lib_dir: Path,
    scenario_path: str | os.PathLike[str],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a subprocess that should see the mock.

    Returns a full environment: ``base`` (default ``os.environ``) with
    ``LD_LIBRARY_PATH`` prefixed by ``lib_dir`` and
    ``GREENWATCH_MOCK_NVML_SCENARIO`` set to ``scenario_path``.
    """
    env = dict(os.environ if base is None else base)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(Path(lib_dir).resolve()) + (f":{old}" if old else "")
    env[ENV_VAR] = str(Path(scenario_path).resolve())
    return env
