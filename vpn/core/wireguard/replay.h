/* The anti-replay window in C: the one native copy of vpn/core/wireguard/replay.py's
 * ReplayWindow (validate and rejects, on the same 8192 one-byte slots), which
 * test_transport_native.py proves equal to it. See replay.py for why byte slots and why the
 * message limit belongs to the window. */
#ifndef VPN_REPLAY_H
#define VPN_REPLAY_H

#include <stdint.h>
#include <string.h>

#include "wire.h"

#define REPLAY_SLOT_MASK (REPLAY_SLOTS - 1)

/* replay.ReplayWindow.validate: true (and remembered) if the counter is below the limit,
 * new, and no more than REPLAY_WINDOW behind the greatest. Only after authentication. */
static inline int replay_validate(uint8_t *seen, uint64_t *greatest, uint64_t counter)
{
    uint64_t g = *greatest;
    if (counter >= REJECT_AFTER_MESSAGES)
        return 0;
    if (counter > g) {
        uint64_t skipped = counter - g - 1;
        if (skipped >= REPLAY_SLOT_MASK) {
            memset(seen, 0, REPLAY_SLOTS);
        } else if (skipped) {
            /* The slots of the counters jumped over, last used by counters now too old. */
            size_t first = (size_t)((g + 1) & REPLAY_SLOT_MASK);
            size_t stop = first + (size_t)skipped;
            if (stop <= REPLAY_SLOTS) {
                memset(seen + first, 0, (size_t)skipped);
            } else {
                memset(seen + first, 0, REPLAY_SLOTS - first);
                memset(seen, 0, stop - REPLAY_SLOTS);
            }
        }
        seen[counter & REPLAY_SLOT_MASK] = 1;
        *greatest = counter;
        return 1;
    }
    if (g - counter > REPLAY_WINDOW)
        return 0;
    if (seen[counter & REPLAY_SLOT_MASK])
        return 0;
    seen[counter & REPLAY_SLOT_MASK] = 1;
    return 1;
}

/* replay.ReplayWindow.rejects: would replay_validate refuse this counter now? Read-only,
 * so it may come before authentication: a replayed message costs no AEAD. */
static inline int replay_rejects(const uint8_t *seen, uint64_t greatest, uint64_t counter)
{
    return counter >= REJECT_AFTER_MESSAGES
           || (counter <= greatest
               && (greatest - counter > REPLAY_WINDOW || seen[counter & REPLAY_SLOT_MASK]));
}

#endif
