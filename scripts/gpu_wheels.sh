#!/usr/bin/env bash
# Download the wheels that the GPU check needs and the GPU machine lacks, into .whl/ (ignored by git).
#
# The machine (docs/gpu_check.md): Python 3.12 on x86-64 Linux with torch 2.11 + torchvision 0.26, numpy,
# pyarrow, pillow, typer, rich, timm, safetensors, huggingface-hub, regex, tqdm, pyyaml, pytest; no network.
# It lacks open_clip and the packages below. Every wheel is fetched for cp312 / manylinux x86_64 without
# its dependencies (--no-deps), at a pinned version (the versions constraints.txt pins, which curate's
# tests pass with), and the script checks that each wheel's needs are met by this set or by the machine.
#
#   bash scripts/gpu_wheels.sh            # -> .whl/*.whl and their total size
#
# What travels to the machine (the working tree plus .whl/) must stay under 64 MiB; the script prints
# both sizes and fails above GPU_WHEELS_LIMIT_MIB (default 56, leaving room for the tree to grow).
# Not fetched, by size: ray (its cp312 wheel is 76 MiB alone; the check skips the Ray step) and
# faiss-gpu (larger still; faiss-cpu is enough for what the check runs).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  open_clip_torch==3.3.0   # needs torch, torchvision, regex, ftfy, tqdm, huggingface-hub, safetensors, timm
  ftfy==6.3.1              # needs wcwidth
  wcwidth==0.9.4
  braceexpand==0.1.7       # curate's shard specs
  webdataset==1.0.2        # needs braceexpand, numpy, pyyaml (tests and the trainer kit)
  faiss-cpu==1.15.1        # needs numpy, packaging (k-means partitions, semdedup); 18 MiB
)
# On the machine already (its image's package list); a need outside this list and the set above fails the check.
PRESENT="torch torchvision regex tqdm huggingface-hub safetensors timm numpy packaging pyyaml pillow pyarrow"
PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64
           manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64)
DEST=.whl
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-56}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/curate-wheels.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
plat=()
for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
names=()
for w in "${WHEELS[@]}"; do names+=("${w%%#*}"); done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${plat[@]}" --platform any -d "$tmp" "${names[@]}"

# one wheel per distribution, each need met: by the set itself or by the machine
"$PY" - "$tmp" "$PRESENT" <<'EOF'
import re, sys, zipfile
from pathlib import Path

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

folder, present = Path(sys.argv[1]), {norm(n) for n in sys.argv[2].split()}
dists: dict[str, str] = {}
needs: dict[str, list[str]] = {}
for whl in sorted(folder.glob("*.whl")):
    name = norm(whl.name.split("-")[0])
    if name in dists:
        sys.exit(f"error: two wheels of {name}: {dists[name]} and {whl.name}")
    dists[name] = whl.name
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    needs[name] = [norm(re.split(r"[ ;<>=!~\[(]", ln.split(":", 1)[1].strip())[0])
                   for ln in lines if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
missing = {f"{n} (needed by {d})" for d, ns in needs.items() for n in ns if n not in dists and n not in present}
if missing:
    sys.exit("error: needs met neither by the wheels nor by the machine: " + ", ".join(sorted(missing)))
print(f"{len(dists)} wheels, one per package; every need met (by the set or by the machine)")
EOF

rm -rf "$DEST"
mkdir -p "$DEST"
mv "$tmp"/*.whl "$DEST"/
ls -l "$DEST" | awk 'NR > 1 {printf "  %8.2f MiB  %s\n", $5 / 1048576, $9}'
wheels=$(cat "$DEST"/*.whl | wc -c)
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2>/dev/null || true) | wc -c)
awk -v w="$wheels" -v t="$tree" -v lim="$LIMIT_MIB" 'BEGIN {
  printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB to carry (the machine takes 64 MiB)\n",
         w / 1048576, t / 1048576, (w + t) / 1048576
  if ((w + t) / 1048576 > lim) { printf "error: over %d MiB\n", lim > "/dev/stderr"; exit 1 }
}'
