#!/bin/sh
# Set-up of a checkout (called by `make setup`, and so by demo/test/lab): one line per step,
# the full output of every step in one log file, its tail shown when a step fails.
#   sh scripts/setup.sh VENV STAMP
set -u
VENV=${1:-.venv}
STAMP=${2:-$VENV/.stdpkt-installed}
LOG=build/setup.log
mkdir -p build
: > "$LOG"

# step LABEL CMD...: runs CMD with its output appended to $LOG
step() {
    label=$1
    shift
    printf 'setup: %s ... ' "$label"
    start=$(date +%s)
    echo "=== $label: $*" >> "$LOG"
    "$@" >> "$LOG" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ "$rc" -ne 0 ]; then
        echo "FAILED (exit $rc, ${secs} s)"
        echo "---- last 25 lines of $LOG ----"
        tail -n 25 "$LOG"
        echo "---- full log: $LOG ----"
        exit "$rc"
    fi
    echo "ok (${secs} s)"
}

make_venv() {
    python3 -m venv "$VENV" && "$VENV/bin/python" -m pip install --upgrade pip
}

step "system packages (scripts/install-system-packages.sh)" sh scripts/install-system-packages.sh
if [ ! -x "$VENV/bin/python" ]; then
    step "python venv in $VENV" make_venv
fi
step "build and install stdpkt-lab with its lab, test and hub extras" \
    "$VENV/bin/python" -m pip install -e ".[lab,test,hub]"
touch "$STAMP"
echo "setup: ready ($VENV/bin/stdpkt; full log: $LOG)"
