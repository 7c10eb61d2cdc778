/* Native receive for vpn/io/udp.py: many datagrams per system call (recvmmsg, with their UDP
 * GRO segment sizes and source addresses), each one screened before any Python runs.
 *
 * The reference is the Python path: UdpSocket.receive_batch (one recvmsg_into a datagram)
 * and DataPath._receive's dispatch, which hands every datagram that is not a transport
 * message to Device.handle_handshake_message (whose message_type, in
 * vpn/core/wireguard/messages.py, rejects by length, type and reserved bytes) and looks every
 * transport message's receiver index up. The screen applies exactly those rules (mac1
 * included, keyed BLAKE2s from the system's OpenSSL libcrypto), so a
 * garbage datagram costs nanoseconds here instead of microseconds there, and is counted
 * under the reason the Python path would have given it. What passes (transport messages
 * for an index we have a keypair for, handshake messages of the right length) goes on to
 * the same Python code as before. Under a flood of about 100,000 datagrams a second most
 * of it never reaches Python; see docs/architecture.md for the numbers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* The WireGuard facts (vpn/core/include/wire.h). The screen is protocol in the io layer:
 * issue 19 item 3 moves it into a core native module; until then this file is the one io
 * module that includes wire.h (tests/unit/test_layers.py names the exception). */
#include "bytes.h"
#include "wire.h"

#define MAX_BATCH 1024
#define SCREEN_PASS SCREEN_REASONS /* screen_one's verdict for a datagram that passes */

/* mac1 is keyed BLAKE2s-128 (the whitepaper's MAC), from OpenSSL's BLAKE2SMAC: fetched once,
 * keyed once per call with HASH("mac1----" || our public key), re-initialised per message. */
static EVP_MAC *blake2s_mac;

typedef struct {
    EVP_MAC_CTX *ctx; /* NULL: no key given, mac1 is left to the Python path */
} Mac1;

static int mac1_open(Mac1 *m, const Py_buffer *key)
{
    m->ctx = NULL;
    if (key->len == 0)
        return 0;
    if (key->len != HASH_LEN) {
        PyErr_Format(PyExc_ValueError, "the mac1 key is %d bytes", HASH_LEN);
        return -1;
    }
    size_t size = MAC_LEN;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
                           OSSL_PARAM_construct_end()};
    m->ctx = EVP_MAC_CTX_new(blake2s_mac);
    if (!m->ctx || EVP_MAC_init(m->ctx, key->buf, (size_t)key->len, params) != 1) {
        EVP_MAC_CTX_free(m->ctx); /* cleanses the key it holds */
        m->ctx = NULL;
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up BLAKE2s for mac1");
        return -1;
    }
    return 0;
}

static void mac1_close(Mac1 *m)
{
    EVP_MAC_CTX_free(m->ctx);
    m->ctx = NULL;
}

/* Does the handshake message p[0:n] carry a valid mac1 (over p[0:n-32], at p[n-32:n-16])?
 * On an OpenSSL failure it says yes: the Python path checks again. */
static int mac1_valid(const Mac1 *m, const uint8_t *p, Py_ssize_t n)
{
    uint8_t tag[MAC_LEN];
    size_t len = 0;
    if (EVP_MAC_init(m->ctx, NULL, 0, NULL) != 1
        || EVP_MAC_update(m->ctx, p, (size_t)(n - 2 * MAC_LEN)) != 1
        || EVP_MAC_final(m->ctx, tag, &len, sizeof(tag)) != 1 || len != MAC_LEN)
        return 1;
    return CRYPTO_memcmp(tag, p + n - 2 * MAC_LEN, MAC_LEN) == 0;
}

/* Entry i of the caller's uint32 array, which may lie at any alignment (memcpy: no
 * misaligned uint32_t load, undefined behaviour in C). */
static inline uint32_t known_at(const uint8_t *known, Py_ssize_t i)
{
    uint32_t v;
    memcpy(&v, known + 4 * i, 4);
    return v;
}

/* Is `index` in the sorted array of receiver indexes we hold keypairs for? */
static int known_index(const uint8_t *known, Py_ssize_t count, uint32_t index)
{
    Py_ssize_t lo = 0, hi = count;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (known_at(known, mid) < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < count && known_at(known, lo) == index;
}

/* The verdict on one datagram: SCREEN_PASS or the reason the Python path would drop it for. */
static int screen_one(const uint8_t *p, Py_ssize_t n, const uint8_t *known, Py_ssize_t nknown,
                      const Mac1 *mac1)
{
    if (n >= TRANSPORT_MIN_SIZE && p[TRANSPORT_TYPE_AT] == MESSAGE_TRANSPORT)
        return known_index(known, nknown, load32(p + TRANSPORT_RECEIVER_AT))
                   ? SCREEN_PASS : SCREEN_UNKNOWN_RECEIVER_INDEX;
    if (n < 4)
        return SCREEN_TOO_SHORT;
    uint32_t word = load32(p), kind = word & 0xff;
    Py_ssize_t expected;
    switch (kind) {
    case MESSAGE_TRANSPORT:
        return SCREEN_TRANSPORT_TOO_SHORT;
    case MESSAGE_INITIATION:
        expected = INITIATION_SIZE;
        break;
    case MESSAGE_RESPONSE:
        expected = RESPONSE_SIZE;
        break;
    case MESSAGE_COOKIE_REPLY:
        expected = COOKIE_REPLY_SIZE;
        break;
    default:
        return SCREEN_UNKNOWN_TYPE;
    }
    if (n != expected)
        return SCREEN_BAD_LENGTH;
    if (word >> 8)
        return SCREEN_RESERVED_NONZERO;
    /* Device.handle_handshake_message: a cookie reply has no mac1; the others must. */
    if (kind != MESSAGE_COOKIE_REPLY && mac1->ctx && !mac1_valid(mac1, p, n))
        return SCREEN_BAD_MAC1;
    return SCREEN_PASS;
}

/* One receive: `len` bytes of datagrams of `segment` bytes (the last possibly shorter).
 * Calls add_run(start, length) for each stretch of consecutive passing datagrams, counts
 * the others by reason; returns whether an unknown receiver index was among them. */
typedef struct {
    Py_ssize_t start, length;
} Run;

static int screen_receive(const uint8_t *data, Py_ssize_t len, Py_ssize_t segment,
                          const uint8_t *known, Py_ssize_t nknown, const Mac1 *mac1,
                          Py_ssize_t counts[], Run *runs, Py_ssize_t *nruns)
{
    int lost = 0;
    Py_ssize_t run_start = -1, pos = 0;
    *nruns = 0;
    if (segment <= 0 || segment > len)
        segment = len ? len : 1;
    do {
        Py_ssize_t n = len - pos < segment ? len - pos : segment;
        int verdict = screen_one(data + pos, n, known, nknown, mac1);
        if (verdict == SCREEN_PASS) {
            if (run_start < 0)
                run_start = pos;
        } else {
            counts[verdict]++;
            lost |= verdict == SCREEN_UNKNOWN_RECEIVER_INDEX;
            if (run_start >= 0) {
                runs[(*nruns)++] = (Run){run_start, pos - run_start};
                run_start = -1;
            }
        }
        pos += n;
    } while (pos < len);
    if (run_start >= 0)
        runs[(*nruns)++] = (Run){run_start, len - run_start};
    return lost;
}

/* The sorted receiver indexes as a uint32 array (native byte order: Device builds it with
 * array("I")). */
static int get_known(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % 4) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "known indexes: a whole number of uint32");
        return -1;
    }
    return 0;
}

static PyObject *counts_tuple(const Py_ssize_t counts[])
{
    int any = 0;
    for (int i = 0; i < SCREEN_REASONS; i++)
        any |= counts[i] != 0;
    if (!any)
        Py_RETURN_NONE;
    PyObject *tuple = PyTuple_New(SCREEN_REASONS);
    for (int i = 0; tuple && i < SCREEN_REASONS; i++) {
        PyObject *v = PyLong_FromSsize_t(counts[i]);
        if (!v)
            Py_CLEAR(tuple);
        else
            PyTuple_SET_ITEM(tuple, i, v);
    }
    return tuple;
}

PyDoc_STRVAR(screen_doc,
"screen(data, segment_size, known, mac1_key) -> (runs, counts, lost)\n\n"
"The screen `receive` applies to one receive (datagrams of segment_size bytes, the last\n"
"possibly shorter; 0 or more than len(data): one datagram), as a pure function: runs lists\n"
"(start, length) of each stretch of datagrams that pass, counts is None or the drops by\n"
"reason (too_short, transport_too_short, unknown_type, bad_length, reserved_nonzero,\n"
"bad_mac1, unknown_receiver_index), lost says whether an unknown receiver index was seen.\n"
"known is the sorted uint32 array of receiver indexes with a keypair; mac1_key the device's\n"
"(HASH(\"mac1----\" || public key)), or b\"\" to leave mac1 to the Python path.");

static PyObject *udp_screen(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, known, key;
    Py_ssize_t segment, counts[SCREEN_REASONS] = {0}, nruns;
    PyObject *known_obj, *list = NULL, *result = NULL;
    Run *runs = NULL;
    Mac1 mac1 = {NULL};
    if (!PyArg_ParseTuple(args, "y*nOy*:screen", &data, &segment, &known_obj, &key))
        return NULL;
    if (get_known(known_obj, &known) < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&key);
        return NULL;
    }
    if (mac1_open(&mac1, &key) < 0)
        goto done;
    /* At most one run per two datagrams, plus one; a datagram is at least one byte here. */
    runs = PyMem_Malloc(sizeof(Run) * (size_t)(data.len / 2 + 2));
    if (!runs) {
        PyErr_NoMemory();
        goto done;
    }
    int lost = screen_receive(data.buf, data.len, segment, known.buf, known.len / 4, &mac1,
                              counts, runs, &nruns);
    list = PyList_New(nruns);
    for (Py_ssize_t i = 0; list && i < nruns; i++) {
        PyObject *run = Py_BuildValue("(nn)", runs[i].start, runs[i].length);
        if (!run)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, run);
    }
    PyObject *count_obj = list ? counts_tuple(counts) : NULL;
    if (count_obj)
        result = Py_BuildValue("NNO", list, count_obj, lost ? Py_True : Py_False);
    else
        Py_XDECREF(list);
done:
    PyMem_Free(runs);
    mac1_close(&mac1);
    PyBuffer_Release(&key);
    PyBuffer_Release(&known);
    PyBuffer_Release(&data);
    return result;
}

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

PyDoc_STRVAR(receive_doc,
"receive(fd, buffer, slot_size, slots, known, mac1_key) -> (entries, counts, lost, stats)\n\n"
"UdpSocket.receive_batch with one recvmmsg and the screen: up to `slots` receives, receive\n"
"i into buffer[i * slot_size:]. entries lists (offset, length, segment_size, sockaddr) for\n"
"each stretch of datagrams that passed (sockaddr: the raw struct sockaddr of the source,\n"
"as bytes), lone datagrams from one source moved together as GRO would have; counts as\n"
"screen's, for the whole batch; lost lists the sockaddrs that sent a transport message for\n"
"an unknown receiver index; stats is (receives, gro_receives, gro_segments, truncated,\n"
"errors). A socket error other than EAGAIN is counted, never raised.");

static PyObject *udp_receive(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    Py_buffer buffer, known, key;
    Py_ssize_t slot_size, slots, counts[SCREEN_REASONS] = {0};
    Mac1 mac1 = {NULL};
    Py_ssize_t receives = 0, gro_receives = 0, gro_segments = 0, truncated = 0, errors = 0;
    PyObject *known_obj, *entries = NULL, *lost = NULL, *result = NULL;
    struct mmsghdr *msgs = NULL;
    struct iovec *iovs = NULL;
    struct sockaddr_storage *names = NULL;
    char (*controls)[CMSG_SPACE(sizeof(int))] = NULL;
    Run *runs = NULL;
    Entry pending = {0};
    const struct sockaddr_storage *last_lost = NULL;
    socklen_t last_lost_len = 0;
    int n = 0;

    if (!PyArg_ParseTuple(args, "iw*nnOy*:receive", &fd, &buffer, &slot_size, &slots,
                          &known_obj, &key))
        return NULL;
    if (get_known(known_obj, &known) < 0) {
        PyBuffer_Release(&buffer);
        PyBuffer_Release(&key);
        return NULL;
    }
    if (mac1_open(&mac1, &key) < 0)
        goto done;
    if (slots < 1 || slots > MAX_BATCH || slot_size < 1 || slot_size > (1 << 20)
        || slot_size * slots > buffer.len) {
        PyErr_SetString(PyExc_ValueError, "receive: slots or slot_size do not fit the buffer");
        goto done;
    }
    msgs = PyMem_Calloc((size_t)slots, sizeof(*msgs));
    iovs = PyMem_Calloc((size_t)slots, sizeof(*iovs));
    names = PyMem_Calloc((size_t)slots, sizeof(*names));
    controls = PyMem_Calloc((size_t)slots, sizeof(*controls));
    runs = PyMem_Malloc(sizeof(Run) * (size_t)(slot_size / 2 + 2));
    if (!msgs || !iovs || !names || !controls || !runs) {
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
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        Py_ssize_t len = (Py_ssize_t)msgs[i].msg_len, segment = len, nruns;
        if (h->msg_flags & MSG_TRUNC) {
            truncated++;
            continue;
        }
        receives++;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO
                && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int size;
                memcpy(&size, CMSG_DATA(c), sizeof(size));
                segment = size;
                gro_receives++;
                gro_segments += size > 0 ? (len + size - 1) / size : 1;
            }
        }
        if (len > slot_size)
            len = slot_size; /* never: MSG_TRUNC says so; kept for the reader of the bounds */
        const uint8_t *data = (const uint8_t *)iovs[i].iov_base;
        int lost_here = screen_receive(data, len, segment, known.buf, known.len / 4, &mac1,
                                       counts, runs, &nruns);
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
    PyObject *count_obj = counts_tuple(counts);
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
    PyMem_Free(runs);
    mac1_close(&mac1);
    PyBuffer_Release(&key);
    PyBuffer_Release(&known);
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef methods[] = {
    {"screen", udp_screen, METH_VARARGS, screen_doc},
    {"receive", udp_receive, METH_VARARGS, receive_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vpn.io._udp",
    "Native batch receive with the datagram screen, the twin of UdpSocket.receive_batch.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__udp(void)
{
    if (!blake2s_mac) {
        blake2s_mac = EVP_MAC_fetch(NULL, "BLAKE2SMAC", NULL);
        if (!blake2s_mac) {
            PyErr_SetString(PyExc_ImportError, "the system OpenSSL has no BLAKE2SMAC");
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
