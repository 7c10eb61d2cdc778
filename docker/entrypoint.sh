#!/bin/sh
# Entry point of the endpoint image.
#
#   vpn-entrypoint up /etc/vpn/NAME.conf [ARGS]   bring the tunnel up (`vpn up --foreground`), as PID 1
#   vpn-entrypoint idle                            only wait (a plain host: client, lan)
#   vpn-entrypoint COMMAND...                      run COMMAND
#
# First, in every case, the routes listed in $ROUTES are added (separated by ";", each as
# `ip route replace` takes it, e.g. "198.18.22.0/24 via 198.18.20.2"): the site-to-site hosts
# reach the far network through their gateway.  Needs NET_ADMIN.
set -eu

if [ -n "${ROUTES:-}" ]; then
    echo "$ROUTES" | tr ';' '\n' | while read -r route; do
        [ -n "$route" ] || continue
        # shellcheck disable=SC2086  # the route is words for ip(8)
        ip route replace $route
        echo "vpn-entrypoint: route $route"
    done
fi

case "${1:-idle}" in
up)
    shift
    [ $# -ge 1 ] || { echo "vpn-entrypoint: up needs a config file" >&2; exit 2; }
    src=$1
    shift
    # The config is usually bind-mounted read-only and, from a git checkout, readable by
    # everyone: `vpn up` would warn.  Serve a private copy instead; the interface keeps the
    # file's name (its stem).
    mkdir -p /run/vpn
    chmod 700 /run/vpn
    conf=/run/vpn/$(basename "$src")
    (umask 077 && cat "$src" >"$conf")
    exec vpn up --foreground "$conf" "$@"
    ;;
idle)
    # PID 1 ignores signals it has no handler for: trap them so `docker stop` is immediate.
    trap 'exit 0' TERM INT
    while :; do
        sleep 3600 &
        wait $! || true
    done
    ;;
*)
    exec "$@"
    ;;
esac
