/* Native receive for vpn/io/udp.py: many datagrams per system call (recvmmsg, with their UDP
 * GRO segment sizes and source addresses), each one screened before any Python runs.
 *
 * The reference is UdpSocket.receive_batch (one recvmsg_into a datagram). The screen is the
 * caller's: a DatagramScreen (vpn/core/include/screen.h) in a capsule, which says of each
 * datagram whether it passes or for which reason it is dropped; this file knows no
 * protocol. What passes goes on to Python as receive_batch would have given it, lone
 * datagrams from one source laid together as GRO would have laid them.
 *
 * Also the data path's busy-poll (vpn/io/busypoll.py): the wait between two wakeups' walks
 * spent polling the TUN and the socket with the GIL released, instead of sleeping; and the
 * TUN's read drain (vpn/io/tun.py): a wakeup's reads in one call, the read that finds
 * nothing left ending it without an exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "counts.h"
#include "screen.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define MAX_BATCH 1024
/* The screen's runs of a receive of up to 28 datagrams (a ping, a handshake) fit on the
 * stack; a larger GRO receive's take the heap, a small allocation. */
#define STACK_RUNS 16

/* An entry of `receive`'s result being built: consecutive datagrams of one source. */
typedef struct {
    Py_ssize_t offset, length, size;
    const struct sockaddr_storage *name; /* NULL: no entry pending */
    socklen_t namelen;
} Entry;

static int flush_entry(PyObject *entries, Entry *e)
{
    PyObject *entry = Py_BuildValue("(nnny#)", e->offset, e->length, e->size,
                                    (const char *)e->name, (Py_ssize_t)e->namelen);
    int failed = !entry || PyList_Append(entries, entry) < 0;
    Py_XDECREF(entry);
    e->name = NULL;
    return failed ? -1 : 0;
}

/* The UDP GRO segment size of a receive of `len` bytes (len itself: one datagram). */
static Py_ssize_t gro_segment(struct msghdr *h, Py_ssize_t len, int *gro)
{
    *gro = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO
            && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof(size));
            *gro = 1;
            return size;
        }
    }
    return len;
}

PyDoc_STRVAR(receive_doc,
"receive(fd, buffer, slot_size, slots, screen) -> (entries, counts, lost, stats)\n\n"
"UdpSocket.receive_batch with one recvmmsg and `screen` (a capsule of a DatagramScreen,\n"
"vpn/core/include/screen.h) on every datagram: up to `slots` receives, receive\n"
"i into buffer[i * slot_size:]. entries lists (offset, length, segment_size, sockaddr) for\n"
"each stretch of datagrams that passed (sockaddr: the raw struct sockaddr of the source,\n"
"as bytes), lone datagrams from one source moved together as GRO would have; counts is\n"
"None or the drops by the screen's reasons, for the whole batch; lost lists the sockaddrs\n"
"of datagrams the screen gave its notify verdict; stats is (receives, gro_receives,\n"
"gro_segments, truncated, errors). A socket error other than EAGAIN is counted, never\n"
"raised.");

static PyObject *udp_receive(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    Py_buffer buffer;
    Py_ssize_t slot_size, slots, counts[SCREEN_MAX_REASONS] = {0};
    const DatagramScreen *screen;
    Py_ssize_t receives = 0, gro_receives = 0, gro_segments = 0, truncated = 0, errors = 0;
    PyObject *screen_obj, *entries = NULL, *lost = NULL, *result = NULL;
    struct mmsghdr *msgs = NULL;
    struct iovec *iovs = NULL;
    struct sockaddr_storage *names = NULL;
    char (*controls)[CMSG_SPACE(sizeof(int))] = NULL;
    ScreenRun stack_runs[STACK_RUNS], *runs = stack_runs, *heap_runs = NULL;
    Entry pending = {0};
    const struct sockaddr_storage *last_lost = NULL;
    socklen_t last_lost_len = 0;
    int n = 0;

    if (!PyArg_ParseTuple(args, "iw*nnO:receive", &fd, &buffer, &slot_size, &slots,
                          &screen_obj))
        return NULL;
    /* The capsule holds its screen alive for as long as this call holds the capsule. */
    screen = PyCapsule_GetPointer(screen_obj, SCREEN_CAPSULE);
    if (!screen)
        goto done;
    if (screen->reasons < 0 || screen->reasons > SCREEN_MAX_REASONS) {
        PyErr_SetString(PyExc_ValueError, "receive: the screen has too many reasons");
        goto done;
    }
    if (slots < 1 || slots > MAX_BATCH || slot_size < 1 || slot_size > (1 << 20)
        || slot_size * slots > buffer.len) {
        PyErr_SetString(PyExc_ValueError, "receive: slots or slot_size do not fit the buffer");
        goto done;
    }
    msgs = PyMem_Calloc((size_t)slots, sizeof(*msgs));
    iovs = PyMem_Calloc((size_t)slots, sizeof(*iovs));
    names = PyMem_Calloc((size_t)slots, sizeof(*names));
    controls = PyMem_Calloc((size_t)slots, sizeof(*controls));
    if (!msgs || !iovs || !names || !controls) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < slots; i++) {
        iovs[i].iov_base = (uint8_t *)buffer.buf + i * slot_size;
        iovs[i].iov_len = (size_t)slot_size;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        msgs[i].msg_hdr.msg_control = controls[i];
        msgs[i].msg_hdr.msg_controllen = sizeof(controls[i]);
    }
    Py_BEGIN_ALLOW_THREADS
    /* As the Python path does: an error (say a pending ICMP error) says nothing about the
     * datagrams queued behind it, so it is counted and the receive tried again. */
    for (int attempt = 0; attempt < 4; attempt++) {
        n = recvmmsg(fd, msgs, (unsigned)slots, MSG_DONTWAIT, NULL);
        if (n >= 0)
            break;
        n = 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno != EINTR)
            errors++;
    }
    Py_END_ALLOW_THREADS

    entries = PyList_New(0);
    lost = PyList_New(0);
    if (!entries || !lost)
        goto done;
    /* The screen writes at most one run per two datagrams of a receive, and one more: the
     * most any receive here needs, not slot_size's worst case (half a MiB a call, which
     * glibc maps and unmaps on every receive). */
    Py_ssize_t most = 1;
    for (int i = 0; i < n; i++) {
        int gro;
        Py_ssize_t len = (Py_ssize_t)msgs[i].msg_len;
        Py_ssize_t segment = gro_segment(&msgs[i].msg_hdr, len, &gro);
        Py_ssize_t datagrams = segment > 0 && segment < len ? (len + segment - 1) / segment : 1;
        if (datagrams > most)
            most = datagrams;
    }
    if (most / 2 + 2 > STACK_RUNS) {
        runs = heap_runs = PyMem_Malloc(sizeof(ScreenRun) * (size_t)(most / 2 + 2));
        if (!runs) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        Py_ssize_t len = (Py_ssize_t)msgs[i].msg_len, nruns;
        int gro;
        if (h->msg_flags & MSG_TRUNC) {
            truncated++;
            continue;
        }
        receives++;
        Py_ssize_t segment = gro_segment(h, len, &gro);
        if (gro) {
            gro_receives++;
            gro_segments += segment > 0 ? (len + segment - 1) / segment : 1;
        }
        if (len > slot_size)
            len = slot_size; /* never: MSG_TRUNC says so; kept for the reader of the bounds */
        const uint8_t *data = (const uint8_t *)iovs[i].iov_base;
        int lost_here = screen_receive(screen, data, len, segment, counts, runs, &nruns);
        if (!nruns && !lost_here)
            continue;
        socklen_t namelen = h->msg_namelen <= sizeof(names[i]) ? h->msg_namelen
                                                                : sizeof(names[i]);
        /* One entry per source in a row: a flood from one address asks Python once. */
        if (lost_here && (!last_lost || last_lost_len != namelen
                          || memcmp(last_lost, &names[i], namelen) != 0)) {
            PyObject *name = PyBytes_FromStringAndSize((const char *)&names[i], namelen);
            if (!name || PyList_Append(lost, name) < 0) {
                Py_XDECREF(name);
                goto fail;
            }
            Py_DECREF(name);
            last_lost = &names[i];
            last_lost_len = namelen;
        }
        for (Py_ssize_t r = 0; r < nruns; r++) {
            Py_ssize_t off = i * slot_size + runs[r].start, run_len = runs[r].length;
            Py_ssize_t size = segment > 0 && segment < run_len ? segment : run_len;
            /* GRO in software for datagrams that came one per receive (a peer without UDP
             * GSO, a path without GRO, a flood): a lone datagram from the same source as
             * the pending entry, no longer than its datagrams, is moved in after them while
             * the slot has room, so Python opens the whole run in one receive_run. */
            if (pending.name && size == run_len && run_len <= pending.size && run_len > 0
                && pending.length % pending.size == 0 && pending.namelen == namelen
                && memcmp(pending.name, &names[i], namelen) == 0
                && pending.offset % slot_size + pending.length + run_len <= slot_size) {
                memmove((uint8_t *)buffer.buf + pending.offset + pending.length,
                        (uint8_t *)buffer.buf + off, (size_t)run_len);
                pending.length += run_len;
                continue;
            }
            if (pending.name && flush_entry(entries, &pending) < 0)
                goto fail;
            pending = (Entry){off, run_len, size, &names[i], namelen};
        }
    }
    if (pending.name && flush_entry(entries, &pending) < 0)
        goto fail;
    PyObject *count_obj = drop_counts(counts, screen->reasons);
    if (count_obj)
        result = Py_BuildValue("ONO(nnnnn)", entries, count_obj, lost, receives, gro_receives,
                               gro_segments, truncated, errors);
fail:
done:
    Py_XDECREF(entries);
    Py_XDECREF(lost);
    PyMem_Free(msgs);
    PyMem_Free(iovs);
    PyMem_Free(names);
    PyMem_Free(controls);
    PyMem_Free(heap_runs);
    PyBuffer_Release(&buffer);
    return result;
}

PyDoc_STRVAR(wait_readable_doc,
"wait_readable(fd_a, fd_b, budget_ns) -> ready\n\n"
"Busy-poll: poll both descriptors without sleeping (a negative one is left out), again and\n"
"again with the GIL released, yielding the CPU between polls, until one is readable or has\n"
"an error, or budget_ns have passed. ready: bit 0 for fd_a, bit 1 for fd_b; 0 when the\n"
"budget ran out.");

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static PyObject *udp_wait_readable(PyObject *self, PyObject *args)
{
    (void)self;
    int fd_a, fd_b;
    long long budget_ns;
    int ready = 0;
    if (!PyArg_ParseTuple(args, "iiL:wait_readable", &fd_a, &fd_b, &budget_ns))
        return NULL;
    struct pollfd fds[2] = {{fd_a, POLLIN, 0}, {fd_b, POLLIN, 0}};
    const short wanted = POLLIN | POLLERR | POLLHUP; /* an error is the walk's to see */
    Py_BEGIN_ALLOW_THREADS
    /* Spinning, not sleeping, is the point: a halted vCPU wakes slowly. The vCPU stays
     * busy for at most budget_ns. */
    int64_t deadline = monotonic_ns() + budget_ns;
    do {
        if (poll(fds, 2, 0) > 0)
            ready = (fds[0].revents & wanted ? 1 : 0) | (fds[1].revents & wanted ? 2 : 0);
        else
            sched_yield(); /* a task waiting for this CPU (the packet's sender) runs first */
    } while (!ready && monotonic_ns() < deadline);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(ready);
}

PyDoc_STRVAR(read_frames_doc,
"read_frames(fd, slots) -> lengths\n\n"
"The TUN's read drain: one read(2) into each of `slots` (writable buffers) in turn, without\n"
"blocking, until one finds nothing waiting or every slot is used; the lengths read, in\n"
"order. The GIL is released for each read. An error (EBADFD once the interface is gone)\n"
"raises OSError when nothing was read yet; after a read it ends the drain, and the next\n"
"call meets it again.");

static PyObject *udp_read_frames(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    PyObject *slots_obj, *slots, *lengths;
    if (!PyArg_ParseTuple(args, "iO:read_frames", &fd, &slots_obj))
        return NULL;
    slots = PySequence_Fast(slots_obj, "read_frames: slots must be a sequence of buffers");
    if (!slots)
        return NULL;
    lengths = PyList_New(0);
    if (!lengths)
        goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(slots); i++) {
        Py_buffer slot;
        ssize_t n;
        int error = 0;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(slots, i), &slot, PyBUF_WRITABLE) < 0)
            goto fail;
        Py_BEGIN_ALLOW_THREADS
        do {
            n = read(fd, slot.buf, (size_t)slot.len);
        } while (n < 0 && errno == EINTR);
        error = n < 0 ? errno : 0;
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&slot);
        if (n < 0) {
            if (error == EAGAIN || error == EWOULDBLOCK || PyList_GET_SIZE(lengths) > 0)
                break;
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        PyObject *length = PyLong_FromSsize_t(n);
        if (!length || PyList_Append(lengths, length) < 0) {
            Py_XDECREF(length);
            goto fail;
        }
        Py_DECREF(length);
    }
    Py_DECREF(slots);
    return lengths;
fail:
    Py_XDECREF(lengths);
    Py_DECREF(slots);
    return NULL;
}

static PyMethodDef methods[] = {
    {"receive", udp_receive, METH_VARARGS, receive_doc},
    {"wait_readable", udp_wait_readable, METH_VARARGS, wait_readable_doc},
    {"read_frames", udp_read_frames, METH_VARARGS, read_frames_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vpn.io._udp",
    "Native batch receive with a datagram screen, the twin of UdpSocket.receive_batch; and a\n"
    "busy-poll of two descriptors, the twin of vpn.io.busypoll.wait_readable; the TUN's read\n"
    "drain, the twin of vpn.io.tun.read_frames_python.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__udp(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
