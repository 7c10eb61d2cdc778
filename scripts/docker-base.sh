#!/usr/bin/env bash
# Builds a Debian bookworm base image without any container registry: debootstrap
# (--variant=minbase) into a temporary directory, then `docker import`.  The Debian packages
# the endpoint image needs are included already, so building docker/Dockerfile on top of it
# (--build-arg BASE=TAG) needs no network at all.
#
#   scripts/docker-base.sh TAG       e.g. vpn-test-base:bookworm
#
# Environment: DOCKER (the docker command, default docker), DEBOOTSTRAP_MIRROR (default: the
# first bookworm mirror in this machine's apt sources, else debootstrap's own default),
# BASE_INCLUDE (packages to include, see below), KEEP_ROOTFS_TAR=FILE (also keep the root
# file system as a tarball, for reuse).
# Root only.  About 40 s on a 2-core machine with a near mirror.
set -euo pipefail

tag=${1:?usage: docker-base.sh TAG}
DOCKER=${DOCKER:-docker}
SUITE=bookworm
# The Debian packages docker/Dockerfile wants; BASE_INCLUDE="" makes a bare minbase (the
# Dockerfile then installs them with apt, as it does on debian:bookworm-slim).
INCLUDE=${BASE_INCLUDE-python3,python3-venv,iproute2,iperf3,procps,iputils-ping}

apt_mirror() {
    # deb822 sources first (Debian 12's default), then the one-line format.
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; ok = 0; types = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, a, " "); uri = a[2] }
                    if ($i ~ /^Suites:/ && (" " $i " ") ~ (" " suite " ")) ok = 1
                    if ($i ~ /^Types:.*[ \t]deb([ \t]|$)/) types = 1
                }
                if (uri != "" && ok && types && uri !~ /security/) { print uri; exit }
            }' "$f"
    done | head -n1
    if [ -f /etc/apt/sources.list ]; then
        awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list
    fi
}

command -v debootstrap >/dev/null || { echo "docker-base: debootstrap is not installed" >&2; exit 1; }
mirror=${DEBOOTSTRAP_MIRROR:-$(apt_mirror | head -n1)}

work=$(mktemp -d /tmp/vpn-docker-base.XXXXXX)
cleanup() {
    # debootstrap may leave /proc or /sys mounted inside the root when it is interrupted.
    local m
    for m in $(awk -v root="$work/root" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "docker-base: debootstrap --variant=minbase $SUITE ${mirror:-(default mirror)}"
# shellcheck disable=SC2086  # the mirror is optional
if ! debootstrap --variant=minbase ${INCLUDE:+--include="$INCLUDE"} "$SUITE" "$work/root" ${mirror} \
        >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    [ -f "$work/root/debootstrap/debootstrap.log" ] && tail -n 20 "$work/root/debootstrap/debootstrap.log" >&2
    echo "docker-base: debootstrap failed" >&2
    exit 1
fi
# Small like the official slim image: no apt lists, no package cache, no docs.
rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin \
       "$work/root"/var/cache/apt/archives/*.deb "$work/root"/usr/share/doc/* \
       "$work/root"/usr/share/man/* "$work/root"/usr/share/locale/*
tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
if [ -n "${KEEP_ROOTFS_TAR:-}" ]; then
    cp "$work/rootfs.tar" "$KEEP_ROOTFS_TAR"
fi
"$DOCKER" import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$work/rootfs.tar" "$tag" >/dev/null
echo "docker-base: imported $tag"
