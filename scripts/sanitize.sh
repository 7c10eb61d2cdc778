#!/usr/bin/env bash
# `make sanitize`: builds the native modules (vpn/core/wireguard/_transport.c, _screen.c and
# _handshake.c, vpn/core/offload/_gso.c and _gro.c, vpn/io/_udp.c) with AddressSanitizer and
# UBSan in a scratch copy of the tree and runs their tests there: the property tests (native
# against the Python reference), the handshake's tests over them, the receive path's (its
# workers' merged accept_run too), and the reproducers of the review findings (issue 22: a
# finalizer calling in during _gro's frames(), the window at the message limit and after a
# failed call, a list shrunk under a batch, a misaligned known array). Any overrun or
# undefined behaviour aborts the run. The installed build is untouched. Then the same
# modules built with ThreadSanitizer (its own build: it cannot share a process with ASan)
# run the tests of the native code that threads
# call at once (one TransportKey sealing and opening on N threads, zero() while they run,
# the send and receive walks on worker threads: open_run, accept_run and _gro's coalescer on
# several threads at once, one X25519Key exchanging on two threads while it is wiped, the
# Noise steps on two threads with one static key, and the responder's PeerTables swapped
# while two threads answer over them).
# Extra arguments go to pytest (e.g. --durations=20).
#
# The property tests run with HYPOTHESIS_PROFILE=sanitize: a fifth of their examples
# (tests/examples.py), as every Python allocation goes through ASan's malloc here and is
# several times slower; `make test` runs the full counts on the normal build, `make fuzz` more.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
# Absolute, but not through the venv's symlink (that would leave the venv).
PYTHON=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")
root=$(pwd)
scratch=$(mktemp -d /tmp/vpn-sanitize.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# build NAME FLAGS: a copy of the tree in $scratch/NAME with the native modules built with
# FLAGS (before setup.py's own: -O3 -Werror still apply), two at a time; cd there.
build() {
    mkdir "$scratch/$1"
    (cd "$root" && cp -r vpn lab tests setup.py pyproject.toml README.md "$scratch/$1/")
    find "$scratch/$1" -name '*.so' -delete
    cd "$scratch/$1"
    CFLAGS="$2 -fno-omit-frame-pointer -g" LDFLAGS="$2" \
        "$PYTHON" setup.py -q build_ext --inplace --parallel 2 >build.log 2>&1 \
        || { cat build.log >&2; echo "sanitize: the $1 build failed" >&2; exit 1; }
}

# check_imports: the instrumented copies must be the ones imported, not the editable
# install's.
check_imports() {
    "$PYTHON" -c 'import sys, vpn.core.wireguard._transport as t, vpn.core.offload._gso as g, vpn.core.offload._gro as r, vpn.io._udp as u, vpn.core.wireguard._screen as s, vpn.core.wireguard._handshake as h
sys.exit(not all(m.__file__.startswith(sys.argv[1]) for m in (t, g, r, u, s, h)))' "$(pwd)" \
        || { echo "sanitize: the tests would not use the instrumented modules" >&2; exit 1; }
}

build address "-fsanitize=address,undefined -fno-sanitize-recover=undefined"
# The Python host is not instrumented, so the runtimes are preloaded; CPython's own
# allocations are not ours to judge (no leak check). PYTHONMALLOC=malloc gives every object
# its own malloc block, so ASan sees an overrun of a packet or output buffer too.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc
export HYPOTHESIS_PROFILE=sanitize
check_imports
# --capture=sys: a sanitizer report goes to file descriptor 2 and must reach the terminal.
# test_gso.py's split_python cases run no C (they stay in `make test`).
"$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys -k 'not split_python' \
    tests/unit/core/wireguard/test_transport_native.py tests/unit/core/test_gso_native.py \
    tests/unit/core/wireguard/test_handshake_native.py tests/unit/core/wireguard/test_noise.py \
    tests/unit/core/wireguard/test_handshake_step.py \
    tests/unit/core/wireguard/test_cookie.py tests/unit/core/wireguard/test_crypto.py \
    tests/unit/core/test_gso.py tests/unit/core/test_gro_native.py \
    tests/unit/io/test_udp_screen.py tests/unit/io/test_tun_drain.py \
    tests/unit/io/test_datapath_receive.py \
    tests/unit/io/test_datapath_batches.py tests/unit/core/wireguard/test_transport_threads.py \
    tests/unit/io/test_datapath_receive_workers.py tests/unit/core/test_gso_runs.py \
    tests/unit/core/wireguard/test_seal_runs.py tests/unit/core/wireguard/test_send.py \
    tests/unit/core/wireguard/test_run_stop.py tests/unit/core/wireguard/test_open_runs.py \
    tests/unit/core/wireguard/test_accept_runs.py tests/unit/core/wireguard/test_whole_runs.py \
    "$@"

# ThreadSanitizer sees the races of instrumented code (ours; OpenSSL and CPython are not):
# state shared between threads touched without the GIL. A report fails the run.
build thread "-fsanitize=thread"
export LD_PRELOAD="$(gcc -print-file-name=libtsan.so)"
unset ASAN_OPTIONS UBSAN_OPTIONS PYTHONMALLOC
export TSAN_OPTIONS=halt_on_error=1:exitcode=66
check_imports
"$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys \
    tests/unit/core/wireguard/test_transport_threads.py tests/unit/io/test_datapath_workers.py \
    tests/unit/io/test_datapath_receive_workers.py \
    tests/unit/core/wireguard/test_open_runs.py::test_open_runs_on_threads_at_once \
    tests/unit/core/wireguard/test_handshake_native.py::test_threads_agree \
    tests/unit/core/wireguard/test_handshake_step.py::test_threads_agree \
    tests/unit/core/wireguard/test_handshake_step.py::test_tables_swapped_while_threads_answer \
    tests/unit/core/wireguard/test_handshake_native.py::test_wipe_while_other_threads_exchange \
    "$@"
