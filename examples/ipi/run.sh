#!/usr/bin/env bash
# NVT path-integral MD (8 beads, 64 Si atoms, 300 K): i-PI moves the atoms, `aceserver ipi`
# evaluates the model over a unix socket.
#
#   ./run.sh [MODEL] [CLIENTS]      MODEL defaults to the shipped models/Si-tiny/Si-tiny.json,
#                                   CLIENTS (connections, beads evaluated at once) to 2
# Output goes to ./run/ (WORKDIR=... to change): simulation.out, centroid and uncertainty files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=$(realpath "${1:-$here/../../models/Si-tiny/Si-tiny.json}")
clients=${2:-2}
[ -f "$model" ] || { echo "run.sh: model file $model not found" >&2; exit 2; }
command -v i-pi >/dev/null || { echo "run.sh: i-pi not found (pip install ipi)" >&2; exit 2; }

work=${WORKDIR:-$here/run}
mkdir -p "$work"
cd "$work"
rm -f simulation.* RESTART EXIT
name="aceserver_example_$$"
sed "s/ADDRESS/$name/" "$here/input.xml" > input.xml
cp "$here/si64.extxyz" .

ipi="" driver=""
trap 'kill $ipi $driver 2>/dev/null || true; rm -f /tmp/ipi_$name' EXIT
# Either may start first: the driver waits for i-PI's socket to appear.
i-pi input.xml > ipi.log 2>&1 & ipi=$!
aceserver ipi "$model" --structure si64.extxyz --unix "$name" --clients "$clients" 2> driver.log & driver=$!
wait $ipi || { echo "run.sh: i-PI failed, see $work/ipi.log" >&2; exit 1; }
wait $driver || { echo "run.sh: the driver failed, see $work/driver.log" >&2; exit 1; }
driver=""
echo "done: $work/simulation.out"
grep -v '^#' simulation.out | tail -n 3
