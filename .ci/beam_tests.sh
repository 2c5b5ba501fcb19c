#!/usr/bin/env bash
# The Beam and `tfds build` paths (issue 23, item 4): a fresh venv with the `beam` extra, running only
# the tests of those two paths (tests/test_data_prep.py: `tfds build` through TFDS's own CLI, and
# `python -m data_prep --beam_pipeline_options=runner=DirectRunner`, each compared record by record
# with the plain build). CI's main environment has no Beam (it pins protobuf < 7), where both tests
# skip; MRSR_REQUIRE_BEAM=1 makes them run here, so a failed install fails instead of skipping.
# `tf` too: TFDS 4.9's `tfds build` CLI imports TensorFlow (its convert_format module), though the
# build itself (ArrayRecord) needs none. ~2.5 min install + ~40 s tests on 2 loaded cores.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "beam tests: $(python --version) in a fresh venv with .[beam,tf,test]"
python -m venv "$tmp/venv"
if ! "$tmp/venv/bin/pip" install -q --disable-pip-version-check -e ".[beam,tf,test]" >"$tmp/pip.log" 2>&1; then
  cat "$tmp/pip.log"; echo "beam tests: pip install failed"; exit 1
fi
MRSR_REQUIRE_BEAM=1 "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider -rs tests/test_data_prep.py \
  -k "tfds_build_cli or beam_direct_runner or beam_options_without_beam"
echo "beam tests: passed"
