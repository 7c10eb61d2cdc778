/* A datagram screen: what a receive that knows no protocol (vpn/io/_udp.c) asks of one that
 * does (vpn/core/wireguard/_screen.c). The screen object hands this struct over in a
 * PyCapsule named SCREEN_CAPSULE; the receive calls `verdict` on each datagram, with the GIL
 * held, and counts the drops by reason. Include <Python.h> first. */
#ifndef VPN_SCREEN_H
#define VPN_SCREEN_H

#include <stdint.h>

#define SCREEN_CAPSULE "vpn.core.screen"
#define SCREEN_MAX_REASONS 16

typedef struct DatagramScreen DatagramScreen;
struct DatagramScreen {
    /* The verdict on the datagram p[0:n]: a drop reason, 0..reasons-1, or `reasons` if it
     * passes. */
    int (*verdict)(const DatagramScreen *screen, const uint8_t *p, Py_ssize_t n);
    int reasons; /* at most SCREEN_MAX_REASONS */
    int notify;  /* the drop whose sources the receive reports, or -1 */
};

/* A stretch of consecutive datagrams that passed. */
typedef struct {
    Py_ssize_t start, length;
} ScreenRun;

/* One receive: `len` bytes of datagrams of `segment` bytes (the last possibly shorter; 0 or
 * more than len: one datagram). Writes a run for each stretch of consecutive passing
 * datagrams (at most len / 2 + 1 of them), counts the others by reason; returns whether
 * a datagram got the `notify` verdict. */
static inline int screen_receive(const DatagramScreen *screen, const uint8_t *data,
                                 Py_ssize_t len, Py_ssize_t segment, Py_ssize_t counts[],
                                 ScreenRun *runs, Py_ssize_t *nruns)
{
    int notified = 0;
    Py_ssize_t run_start = -1, pos = 0;
    *nruns = 0;
    if (segment <= 0 || segment > len)
        segment = len ? len : 1;
    do {
        Py_ssize_t n = len - pos < segment ? len - pos : segment;
        int verdict = screen->verdict(screen, data + pos, n);
        if (verdict == screen->reasons) {
            if (run_start < 0)
                run_start = pos;
        } else {
            counts[verdict]++;
            notified |= verdict == screen->notify;
            if (run_start >= 0) {
                runs[(*nruns)++] = (ScreenRun){run_start, pos - run_start};
                run_start = -1;
            }
        }
        pos += n;
    } while (pos < len);
    if (run_start >= 0)
        runs[(*nruns)++] = (ScreenRun){run_start, len - run_start};
    return notified;
}

#endif
