# Sourced by the device scripts (device_check.sh, device_evidence.sh) with their arguments:
# "[--smoke] OUT_DIR" -> SMOKE (1 with --smoke or SMOKE=1), OUT (absolute, created) and PY (the
# interpreter: $PYTHON, else python3, else python). A wrong call is one usage line and exit 2.
SMOKE=${SMOKE:-0}
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=1
  shift
fi
if [[ $# -ne 1 ]]; then
  echo "usage: bash scripts/$(basename "$0") [--smoke] OUT_DIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}
