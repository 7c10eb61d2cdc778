#!/usr/bin/env bash
# Builds vpn/offload/_gso.c with AddressSanitizer and UBSan into a temporary copy of the
# tree and runs the GSO tests (native against the Python reference) there. Any overrun or
# undefined behaviour aborts the run. Usage: scripts/sanitize-gso.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # absolute, not resolved: a venv's python is a symlink
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r vpn tests setup.py pyproject.toml "$tmp/"
find "$tmp/vpn" -name '*.so' -delete
cd "$tmp"
# The extension's own -O2 -Werror still apply; these come first from the environment.
CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g" \
LDFLAGS="-fsanitize=address,undefined" \
    "$PYTHON" setup.py -q build_ext --inplace >build.log 2>&1 || { cat build.log >&2; exit 1; }
# CPython is not built with ASan: its runtime must be loaded first. PYTHONMALLOC=malloc gives
# every object its own malloc block, so an overrun of a packet or output buffer is seen.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONMALLOC=malloc
# The copy with the sanitized module must be the one imported, not the editable install.
"$PYTHON" -c 'import sys, vpn.offload._gso as g
assert g.__file__.startswith(sys.argv[1]), g.__file__' "$tmp"
# --capture=sys: a sanitizer report goes to the real stderr, not into a capture file.
"$PYTHON" -m pytest -q --capture=sys -p no:cacheprovider tests/unit/test_gso_native.py \
    tests/unit/test_gso.py
