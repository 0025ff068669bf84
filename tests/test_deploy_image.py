"""The image build's context (deploy/Containerfile's `COPY . .`): the ignore file keeps out everything
git ignores (a host's venv, caches, build/ and egg-info, whose stale modules setuptools could put into
the wheel) and .git, and keeps every file git sees.  Docker reads .dockerignore, Podman and Buildah
.containerignore: one file, linked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _patterns(path: Path) -> list[re.Pattern[str]]:
    """The ignore file's patterns as regular expressions, with Docker's meaning: ``*`` and ``?`` within
    one path element, ``**`` across any number of them, paths relative to the context's root."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled by this check"
        rx = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif line[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif line[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(line[i]), i + 1
        out.append(re.compile(rx.rstrip("/")))
    return out


def _excluded(rel: str, patterns: list[re.Pattern[str]]) -> bool:
    """A path is left out where it, or a folder above it, matches a pattern."""
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return any(p.fullmatch(pre) for p in patterns for pre in prefixes)


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", *args, "-z"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    return [p for p in out.stdout.split("\0") if p]


def test_containerignore_is_the_dockerignore():
    link = REPO / ".containerignore"
    assert link.is_symlink() and link.resolve() == (REPO / ".dockerignore").resolve()


def test_the_build_context_is_what_git_sees():
    patterns = _patterns(REPO / ".dockerignore")
    assert _excluded(".git", patterns)
    # Everything git ignores here and in any checkout: the ignore rules themselves, applied to the
    # paths this checkout has, plus the ones every developer's checkout makes.
    ignored = _git("ls-files", "-oi", "--exclude-standard", "--directory")
    made = [".venv", "build/lib/greenwatch/cli.py", "greenwatch.egg-info/PKG-INFO", ".hypothesis/examples",
            "greenwatch/__pycache__/cli.cpython-311.pyc", ".mypy_cache/3.11", ".pytest_cache/v"]
    for rel in ignored + made:
        assert _excluded(rel, patterns), f"{rel} would be copied into the image build"
    for rel in _git("ls-files", "-co", "--exclude-standard"):
        assert not _excluded(rel, patterns), f"{rel} is left out of the image build"
