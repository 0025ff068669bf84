#!/usr/bin/env bash
# One command that prepares a fresh Debian/Ubuntu machine and runs the whole
# test suite:   bash scripts/setup-tests.sh [pytest args...]
#
#  1. installs the Debian packages the tests need (skipped when all present),
#  2. stops/disables the system services those packages start (the tests run
#     their own daemons on free loopback ports),
#  3. creates .venv and installs greenwatch with the [test] and [site] extras
#     (scripts/setup-dev.sh),
#  4. runs .venv/bin/python -m pytest "$@" and exits with pytest's status.
#
# SKIP_APT=1 skips steps 1-2 (for machines where you manage packages yourself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages needed by the test suite.  Extend this list as needed.
TEST_DEB_PACKAGES="mosquitto influxdb gcc slurm-wlm munge chromium python3-venv prometheus openipmi ipmitool freeipmi-tools"
# System services those packages may auto-start; the tests never use them.
STOP_SERVICES="mosquitto influxdb slurmctld slurmd prometheus"

# A package also counts as present if its key binary is (hand-installed builds).
declare -A PKG_BINARY=(
    [mosquitto]=/usr/sbin/mosquitto
    [influxdb]=/usr/bin/influxd
    [gcc]=gcc
    [slurm-wlm]=slurmctld
    [munge]=munged
    [chromium]=chromium
    [prometheus]=/usr/bin/prometheus
    [openipmi]=/usr/bin/ipmi_sim
    [ipmitool]=/usr/bin/ipmitool
    [freeipmi-tools]=/usr/sbin/ipmi-dcmi
)

log() { echo "setup-tests: $*"; }

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

pkg_present() {
    local pkg="$1" bin="${PKG_BINARY[$1]:-}"
    if [[ -n "$bin" ]] && { [[ -x "$bin" ]] || command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]]; }; then
        return 0
    fi
    if [[ "$pkg" == python3-venv ]] && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        return 0
    fi
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" == installed ]]
}

install_packages() {
    local missing=() pkg
    for pkg in $TEST_DEB_PACKAGES; do
        pkg_present "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages present: $TEST_DEB_PACKAGES"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing packages (${missing[*]}) and no apt-get; install them by hand or use Debian 12." >&2
        exit 1
    fi
    if [[ "$(id -u)" != 0 && -z "$SUDO" ]]; then
        log "missing packages (${missing[*]}); run as root or install sudo." >&2
        exit 1
    fi
    log "installing: ${missing[*]}"
    # Keep package scripts from starting services during the install.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    } || rc=$?
    [[ -n "$added_policy" ]] && $SUDO rm -f "$policy"
    if [[ $rc -ne 0 ]]; then
        log "apt-get failed (status $rc)" >&2
        exit "$rc"
    fi
}

stop_system_services() {
    local svc pid args
    for svc in $STOP_SERVICES; do
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
                log "stopping and disabling system service $svc"
                $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
            fi
        elif [[ -x "/etc/init.d/$svc" ]] && command -v service >/dev/null 2>&1; then
            $SUDO service "$svc" stop >/dev/null 2>&1 || true
        fi
    done
    # Leftovers started by the packages: only processes running the packaged
    # config from /etc (the tests' own daemons use throwaway configs).
    for pid in $(pgrep -x 'mosquitto|influxd|slurmctld|slurmd' 2>/dev/null || true); do
        args="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
        if [[ "$args" == *" /etc/mosquitto/"* || "$args" == *" /etc/influxdb/"* || "$args" =~ ^/usr/sbin/slurm(ctld|d)( |$) ]]; then
            log "stopping system daemon pid $pid: $args"
            $SUDO kill "$pid" 2>/dev/null || true
        fi
    done
}

if [[ "${SKIP_APT:-0}" != 1 ]]; then
    install_packages
    stop_system_services
fi

EXTRAS=test,site bash scripts/setup-dev.sh

log "running: .venv/bin/python -m pytest $*"
exec .venv/bin/python -m pytest "$@"
