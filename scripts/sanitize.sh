#!/usr/bin/env bash
# `make sanitize`: builds the native transport module (vpn/wireguard/_transport.c) with
# AddressSanitizer and UBSan in a scratch copy of the tree and runs its property tests
# (tests/unit/wireguard/test_transport_native.py) there. The installed build is untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
# Absolute, but not through the venv's symlink (that would leave the venv).
PYTHON=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")
work=$(mktemp -d /tmp/vpn-sanitize.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r vpn tests setup.py pyproject.toml README.md "$work/"
find "$work" -name '*.so' -delete
cd "$work"
sanitizers="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="$sanitizers -fno-omit-frame-pointer -g -O1" LDFLAGS="$sanitizers" \
    "$PYTHON" setup.py -q build_ext --inplace 2>&1 | grep -v -e '^WARNING: Location' \
    -e _BetaConfiguration -e 'warnings.warn' || true
module=$(echo vpn/wireguard/_transport*.so)
[ -f "$module" ] || { echo "sanitize: the instrumented build failed" >&2; exit 1; }
# The Python host is not instrumented, so the runtimes are preloaded; CPython's own
# allocations are not ours to judge (no leak check).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export PYTHONMALLOC=malloc  # PyMem_Malloc through malloc, so ASan sees our buffers too
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$PYTHON" -c "import vpn.wireguard._transport as t, sys; sys.exit(not t.__file__.startswith('$work'))" \
    || { echo "sanitize: the tests would not use the instrumented module" >&2; exit 1; }
# --capture=sys: a sanitizer report goes to file descriptor 2 and must reach the terminal.
"$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys tests/unit/wireguard/test_transport_native.py
