#!/usr/bin/env bash
# The GPU check in one command (docs/gpu_check.md): on the GPU machine, from the repository root,
#
#   bash scripts/gpu_check.sh            # results in $OUT (else ./gpu-check-out): gpu.json, gpu.md, gpu.log
#   bash scripts/gpu_check.sh --cpu      # tiny sizes on the CPU, in the current environment (make test)
#
# Without --cpu, the wheels in .whl/ (scripts/gpu_wheels.sh) are installed into a temporary folder put in
# front of the machine's own packages; without .whl/ the current environment is used as it is. Further
# arguments go to scripts/gpu_check.py (--steps, --set KEY=VALUE, --budget SECONDS; see its --help).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
cpu=0
for a in "$@"; do [ "$a" = "--cpu" ] && cpu=1; done

wheels="none (the current environment)"
if [ "$cpu" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/curate-gpu-site.XXXXXX")
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  then
    wheels="$(ls .whl | sed 's/-py.*//; s/-cp.*//' | tr '\n' ' ')installed into $site"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    wheels="pip could not install .whl/*.whl (see the output above); the current environment is used"
  fi
fi
echo "wheels: $wheels"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CURATE_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$PY" scripts/gpu_check.py --wheels "$wheels" "$@"
