#!/usr/bin/env bash
# Python 3.12 smoke (issue 22, items 0 and 1): a fresh venv, the README's install (no TensorFlow), the
# sample's data_prep, a tiny training of all three stages, eval and predict. GPU images run 3.12 and CI's default
# interpreter is 3.11, so a module that only 3.11's dependency set happens to bring (importlib_resources
# once) would otherwise break the README's command there unseen. Skips, saying so, where no 3.12 is found.
set -euo pipefail
cd "$(dirname "$0")/.."
py=""
# pyenv's shim answers `command -v` even where it cannot run 3.12: try each candidate for real.
for cand in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 python3.12; do
  if "$cand" -c "import sys; assert sys.version_info[:2] == (3, 12)" >/dev/null 2>&1; then
    py="$(command -v "$cand")"; break
  fi
done
if [[ -z "$py" ]]; then echo "py312 smoke: skipped (no Python 3.12 interpreter found)"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "py312 smoke: $("$py" --version) in a fresh venv"
"$py" -m venv "$tmp/venv"
# The README's install, no extras: training, eval and predict must run without TensorFlow (the GPU
# images ship none), so this is also the no-TensorFlow check.
"$tmp/venv/bin/pip" install -q --disable-pip-version-check -e . 2>&1 | grep -v -E "^WARNING: (Location|Running pip)" || true
PY="$tmp/venv/bin/python"
"$PY" -c "import importlib.util, sys; sys.exit('py312 smoke: pip install -e . brought TensorFlow' if importlib.util.find_spec('tensorflow') else 0)"
"$PY" -m data_prep --dataset=sample --data_dir="$tmp/data"
common=(--config=configs/tiny.py --workdir="$tmp/run" --config.data_dir="$tmp/data")
"$PY" run.py "${common[@]}"
"$PY" run.py "${common[@]}" --mode=eval
vol="$(ls data_prep/sample_data/ixi_t1_2mm/*.nii.gz | head -1)"
"$PY" run.py "${common[@]}" --mode=predict --input="$vol" --output="$tmp/sr.nii.gz"
"$PY" -c "import nibabel, sys; img = nibabel.load(sys.argv[1]); print('py312 smoke: predict wrote', img.shape)" "$tmp/sr.nii.gz"
echo "py312 smoke: passed"
