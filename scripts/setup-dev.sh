#!/usr/bin/env bash
# Development set-up: create .venv in the repository root (Python 3.11+) if it
# is missing and install greenwatch into it in editable mode, with the site
# services' libraries (the [site] extra: agent, collector, dashboards, metrics).
#
#   bash scripts/setup-dev.sh                 # pip install -e '.[site]'
#   EXTRAS=test,site bash scripts/setup-dev.sh  # pip install -e '.[test,site]' (what the tests need)
#   EXTRAS= bash scripts/setup-dev.sh         # pip install -e . (the researcher's core install)
#   PYTHON=/usr/bin/python3.12 bash scripts/setup-dev.sh
#
# Re-running is cheap: pip is skipped while pyproject.toml and the extras are
# unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MIN_PY="3.11"
EXTRAS="${EXTRAS-site}"

py_ok() {  # $1 = interpreter; true if it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

install_hint() {
    cat >&2 <<'HINT'
greenwatch needs Python 3.11 or newer with the venv module.
  Debian 12 / Ubuntu 24.04:  apt-get install python3 python3-venv
  Ubuntu 22.04:              apt-get install python3.11 python3.11-venv
  elsewhere:                 install Python >= 3.11, then PYTHON=/path/to/python3.11 bash scripts/setup-dev.sh
HINT
}

if [[ ! -x .venv/bin/python ]]; then
    PY=""
    for cand in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [[ -n "$cand" ]] || continue
        if command -v "$cand" >/dev/null 2>&1 && py_ok "$cand"; then PY="$(command -v "$cand")"; break; fi
    done
    if [[ -z "$PY" ]]; then
        echo "setup-dev: no Python >= $MIN_PY found (tried \$PYTHON, python3.13, python3.12, python3.11, python3)." >&2
        install_hint
        exit 1
    fi
    echo "setup-dev: creating .venv with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
    if ! "$PY" -m venv .venv; then
        rm -rf .venv
        echo "setup-dev: '$PY -m venv' failed; the venv/ensurepip module is probably missing." >&2
        install_hint
        exit 1
    fi
elif ! py_ok .venv/bin/python; then
    echo "setup-dev: the existing .venv uses $(.venv/bin/python -V 2>&1 || echo 'a broken interpreter'), but Python >= $MIN_PY is required." >&2
    echo "setup-dev: remove it (rm -rf .venv) and run this script again." >&2
    install_hint
    exit 1
fi

spec="."
[[ -n "$EXTRAS" ]] && spec=".[$EXTRAS]"
stamp=".venv/.greenwatch-install-stamp"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) extras=$EXTRAS"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && .venv/bin/python -c 'import importlib.metadata as m; m.version("greenwatch")' >/dev/null 2>&1; then
    echo "setup-dev: .venv is up to date ($spec)"
else
    echo "setup-dev: pip install -e '$spec'"
    .venv/bin/python -m pip install --disable-pip-version-check -q -e "$spec"
    echo "$want" > "$stamp"
fi
