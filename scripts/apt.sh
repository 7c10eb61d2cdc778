# Sourced by bootstrap.sh and docker-test.sh: apt-get that waits for apt's locks.
#
# A fresh Debian machine runs unattended-upgrades (or apt-daily) at boot, which holds
# /var/lib/dpkg/lock-frontend or /var/lib/apt/lists/lock for a minute or more; a plain
# apt-get fails at once with "Could not get lock". apt's own DPkg::Lock::Timeout covers the
# dpkg lock of `install` but not the lists lock of `update` (apt 2.6), so the wait is here:
# retry while the failure is a held lock, up to APT_LOCK_WAIT seconds (default 600), and say
# once which process is being waited for.

APT_LOCK_WAIT=${APT_LOCK_WAIT:-600}

# apt_get ARGS...: apt-get ARGS, its stdout to /dev/null, waiting for a held lock.
apt_get() {
    local deadline=$((SECONDS + APT_LOCK_WAIT)) told="" err holder
    while true; do
        if err=$(apt-get "$@" 2>&1 >/dev/null); then
            [ -z "$told" ] || echo "${0##*/}: apt's lock is free, going on" >&2
            return 0
        fi
        if ! grep -Eq 'Could not get lock|Unable to (lock|acquire)' <<<"$err"; then
            echo "$err" >&2
            return 1
        fi
        holder=$(grep -Eo 'held by process [0-9]+( \([^)]*\))?' <<<"$err" | head -n 1)
        holder=${holder:-held by another process}
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "${0##*/}: apt's lock is still ${holder} after ${APT_LOCK_WAIT}s;" \
                 "let it finish (or set APT_LOCK_WAIT) and run this again" >&2
            return 1
        fi
        if [ -z "$told" ]; then
            echo "${0##*/}: waiting up to ${APT_LOCK_WAIT}s for apt's lock, ${holder}" \
                 "(at boot this is usually unattended-upgrades)" >&2
            told=1
        fi
        # Polls another process's lock: no event to wait on short of taking it ourselves.
        sleep 2
    done
}
