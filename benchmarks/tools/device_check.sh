#!/usr/bin/env bash
# One-shot GPU check for an offline machine: benchmarks/tools/device_check.sh OUT_DIR
#
# Installs nothing from the network: the packages the harness needs that the machine lacks come from the wheel
# folder travelling with the tree (.whl/, git-ignored), installed with `pip --no-index --no-deps` into a temporary
# folder put on PYTHONPATH (a wheel whose distribution is already installed is skipped, so the machine's own
# versions stay in charge). Then `python -m benchmarks.tools.device_check OUT_DIR` runs the parts (CUDA tests,
# bf16-vs-fp32 precision, the AVE-preset speed run, the packed-grid benchmark, the harness-overhead benchmark)
# under one time budget and writes every figure to OUT_DIR/device_check.json.
#
# Environment: PYTHON (default python3), DEVICE_CHECK_WHEELS (default .whl), DEVICE_CHECK_DEVICE (cuda; cpu runs
# the tiny presets, for testing the script without a GPU), DEVICE_CHECK_BUDGET_S, DEVICE_CHECK_PARTS,
# DEVICE_CHECK_COMPILE (1 on CUDA: also time the AVE preset with the compiled attention chain); see device_check.py.
set -u
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR   (writes OUT_DIR/device_check.json)" >&2
    exit 2
fi
OUT_DIR=$1
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
WHEELS=${DEVICE_CHECK_WHEELS:-.whl}
SITE=$(mktemp -d "${TMPDIR:-/tmp}/device-check-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT

# wheels of distributions this Python lacks (names from the file names: NAME-VERSION-...whl)
MISSING=$("$PY" - "$WHEELS" <<'PYEOF'
import glob, importlib.metadata as md, os, re, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    name = re.sub(r"[-_.]+", "-", os.path.basename(path).split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(path)
PYEOF
)
if [ -n "$MISSING" ]; then
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $MISSING \
        || { echo "device_check: installing the carried wheels failed" >&2; exit 3; }
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import wandb" 2>/dev/null; then
    export PYTHONPATH="$PYTHONPATH:$PWD/benchmarks/tools/offline_stubs"
    STUBS=wandb
fi
export PYTHONUNBUFFERED=1
echo "$MISSING" | sed '/^$/d' | xargs -r -n1 basename > "$OUT_DIR/wheels_installed.txt"
DEVICE_CHECK_STUBS=${STUBS:-} exec "$PY" -m benchmarks.tools.device_check "$OUT_DIR"
