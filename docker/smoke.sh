#!/usr/bin/env bash
# Container smoke test: build docker/Dockerfile, start the image, wait for /readyz, compare one
# calculation with the same model evaluated in-process, send SIGTERM while a request is in flight,
# and require that request to finish and the server to exit with code 0.
#
#   docker/smoke.sh                 # from the repository root; .ci/run runs it after the tests
#
# Engine: docker when a daemon answers, else podman (+ buildah). Base image: $ACESERVER_BASE_IMAGE,
# else python:3.11-slim with docker, else a local minimal Debian made by docker/base-image.sh
# (reused once made). The run path that was used is printed ("engine path: ...").
# Env: PYTHON (an interpreter with aceserver installed, default .venv/bin/python), SMOKE_PORT,
# SMOKE_RUN_PATH=buildah (skip the `run` paths, to exercise the last resort).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${ACESERVER_IMAGE:-localhost/aceserver:smoke}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
PORT="${SMOKE_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
URL="http://127.0.0.1:$PORT"
NAME="aceserver-smoke-$$"
say() { echo "smoke: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# ---- engine and base image -----------------------------------------------------------------------
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
    BASE="${ACESERVER_BASE_IMAGE:-python:3.11-slim}"
elif command -v podman >/dev/null; then
    ENGINE=podman
    BASE="${ACESERVER_BASE_IMAGE:-$(docker/base-image.sh)}"
else
    fail "no container engine (docker daemon or podman) is available"
fi
say "engine $ENGINE, base image $BASE"

# ---- build ---------------------------------------------------------------------------------------
build=(build -f docker/Dockerfile --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE")
if [ "$ENGINE" = podman ]; then
    # chroot isolation: builds where the OCI runtime cannot make containers (nested sandboxes)
    build+=(--isolation chroot --network host --ignorefile docker/Dockerfile.dockerignore)
    # behind a TLS-inspecting proxy, pip in the build needs the host's CA bundle
    cert="${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}"
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        build+=(-v "$cert:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
    fi
fi
t0=$(date +%s)
$ENGINE "${build[@]}" . >&2 || fail "image build"
say "built $IMAGE in $(( $(date +%s) - t0 )) s; size $($ENGINE image inspect "$IMAGE" --format '{{.Size}}' |
     awk '{printf "%.0f MB", $1/1e6}')"
[ "$($ENGINE image inspect "$IMAGE" --format '{{.Config.User}}')" = ace ] || fail "the image must run as user ace"

# ---- start: the first run path that works --------------------------------------------------------
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
    $ENGINE rm -f "$NAME" >/dev/null 2>&1 || true
    if [ -n "${BCTR:-}" ]; then buildah rm "$BCTR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

running() {   # is the server still up (container running / process alive)?
    if [ -n "$PID" ]; then kill -0 "$PID" 2>/dev/null
    else [ "$($ENGINE inspect "$NAME" --format '{{.State.Running}}' 2>/dev/null)" = true ]; fi
}

start_run() {   # $ENGINE run with the image's own entrypoint, user and environment
    $ENGINE rm -f "$NAME" >/dev/null 2>&1 || true
    $ENGINE "$@" run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" "${ULIMITS[@]}" "$IMAGE" >&2 || return 1
    sleep 1
    running
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
descendant_server() {   # pid of the `aceserver serve` process under buildah's process $1
    local p
    for p in $(ps -o pid= --ppid "$1"); do
        case "$(ps -o args= -p "$p")" in
            *buildah*) ;;                               # buildah's own helpers name the command too
            *"aceserver serve"*) echo "$p"; return ;;
        esac
        descendant_server "$p"
    done
}

ULIMITS=()
t_start=$(now_ms)
if [ "${SMOKE_RUN_PATH:-}" != buildah ] && start_run; then
    PATH_USED="$ENGINE run (entrypoint, user and environment of the image; port 8000 published on $PORT)"
elif [ "${SMOKE_RUN_PATH:-}" != buildah ] && [ "$ENGINE" = podman ] && command -v runc >/dev/null \
     && ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=4096:4096") \
     && t_start=$(now_ms) && start_run --runtime runc; then
    # crun may not set rlimits or use hybrid cgroups inside a sandbox; runc with the host's open-file
    # limit and a modest process limit (the server runs one process with a few dozen threads) can
    PATH_USED="podman --runtime runc run with explicit rlimits (entrypoint, user and environment of the image; port 8000 published on $PORT)"
elif [ "$ENGINE" = podman ] && command -v buildah >/dev/null; then
    # last resort: buildah's chroot isolation runs the image's filesystem, user and environment, with
    # the entrypoint's command spelled out (buildah run does not apply ENTRYPOINT) on the host network
    $ENGINE rm -f "$NAME" >/dev/null 2>&1 || true
    BCTR=$(buildah from "$IMAGE")
    t_start=$(now_ms)
    buildah run --isolation chroot --network host --user ace "$BCTR" -- \
        aceserver serve --host 127.0.0.1 --port "$PORT" >&2 &
    PID=$!
    sleep 3
    running || fail "buildah run exited"
    PATH_USED="buildah run --isolation chroot --network host (image filesystem, user ace and environment; entrypoint command given explicitly, port $PORT)"
else
    fail "no way to run the image here"
fi
say "engine path: $PATH_USED"

# ---- ready ---------------------------------------------------------------------------------------
for _ in $(seq 600); do
    if "$PYTHON" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$URL/readyz', timeout=2).status != 200)" 2>/dev/null; then
        break
    fi
    running || fail "the server exited before it was ready"
    sleep 0.5
done
ready_ms=$(( $(now_ms) - t_start ))
"$PYTHON" -c "import urllib.request; urllib.request.urlopen('$URL/readyz', timeout=2)" || fail "not ready after 300 s"
say "cold start to /readyz: $((ready_ms / 1000)).$(printf %03d $((ready_ms % 1000))) s"
if [ -z "$PID" ]; then
    [ "$($ENGINE exec "$NAME" id -u)" != 0 ] || fail "the server runs as root"
fi

# ---- one calculation equal to the in-process number, then SIGTERM with a request in flight -----
"$PYTHON" - "$URL" <<'EOF' &
import json, sys, urllib.request
import numpy as np
from ase.build import bulk
from aceserver import load_model
from aceserver.serving.http.registry import default_model

url = sys.argv[1]
def post(images, timeout=120):
    body = {"structures": [{"numbers": a.numbers.tolist(), "positions": a.positions.tolist(),
                            "cell": a.cell.array.tolist(), "pbc": a.pbc.tolist()} for a in images]}
    info = json.load(urllib.request.urlopen(url + "/v1/models", timeout=10))
    req = urllib.request.Request(f"{url}/v1/models/{info['default']}/calculate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=timeout))

name, path = default_model()
model = load_model(str(path))
atoms = bulk(model.elements[0], "diamond", a=5.43, cubic=True).repeat(2)
atoms.rattle(0.05, seed=1)
reply = post([atoms])
ref = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
assert reply["sha256"] == model.sha256, (reply["sha256"], model.sha256)
got = reply["results"][0]
assert abs(got["energy"] - ref.energy) <= 1e-9 * max(1.0, abs(ref.energy)), (got["energy"], ref.energy)
assert np.allclose(got["forces"], ref.forces, rtol=1e-10, atol=1e-10)
print(f"smoke: calculation equals the in-process number: {got['energy']:.9f} eV ({name}, 64 atoms)",
      file=sys.stderr, flush=True)
import os
open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "aceserver-smoke-calc-ok-" + url.rsplit(":", 1)[1]), "w").close()
# the in-flight request: a batch of large cells (seconds of work), sent just before SIGTERM; it must
# still be answered in full
big = atoms.repeat((3, 3, 2))
reply = post([big] * 8, timeout=300)
assert [len(r["forces"]) for r in reply["results"]] == [len(big)] * 8
print(f"smoke: the request in flight during SIGTERM was answered (8 x {len(big)} atoms)", file=sys.stderr, flush=True)
EOF
client=$!
marker="${TMPDIR:-/tmp}/aceserver-smoke-calc-ok-$PORT"
for _ in $(seq 600); do [ -e "$marker" ] && break; kill -0 $client 2>/dev/null || break; sleep 0.2; done
[ -e "$marker" ] || { wait $client || true; fail "the calculation did not match"; }
rm -f "$marker"
sleep 0.3                                  # the large request is now being evaluated
say "SIGTERM"
code=0
if [ -n "$PID" ]; then
    kill -TERM "$(descendant_server "$PID")" 2>/dev/null || kill -TERM "$PID"
    wait "$PID" || code=$?
    PID=""
else
    $ENGINE kill --signal TERM "$NAME" >/dev/null
    code=$($ENGINE wait "$NAME" | tail -1)
fi
wait $client || fail "the request in flight during SIGTERM failed"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM (expected 0)"
say "drained and exited with code 0"
say "PASSED ($PATH_USED)"
