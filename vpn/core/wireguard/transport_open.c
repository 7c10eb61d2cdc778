/* Opening for _transport.c: a batch of messages (open_batch, Keypair.decrypt_batch) and a
 * GRO receive's run of them with the inner checks and records (open_run,
 * Keypair.receive_run). The replay window is replay.h's. */
#include "transport.h"

#include <openssl/crypto.h>

#include "replay.h"

/* Open one message's n-byte body into plain: 1 if it authenticated, 0 if not, -1 if OpenSSL
 * itself failed; unless 1, plain is wiped: no unauthenticated plaintext stays. */
static int open_message(EVP_CIPHER_CTX *ctx, const uint8_t *msg, int n, uint8_t *plain,
                        uint64_t counter)
{
    uint8_t nonce[12];
    int outl, opened = -1;
    make_nonce(nonce, counter);
    if (EVP_DecryptInit_ex2(ctx, NULL, NULL, nonce, NULL) == 1
        && EVP_DecryptUpdate(ctx, plain, &outl, msg + TRANSPORT_HEADER_SIZE, n) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, AEAD_TAG_LEN,
                               (void *)(msg + TRANSPORT_HEADER_SIZE + n)) == 1)
        opened = EVP_DecryptFinal_ex(ctx, plain + n, &outl) == 1;
    if (opened != 1)
        OPENSSL_cleanse(plain, (size_t)n);
    return opened;
}

/* Open every message into out, back to back, then check it against the replay window;
 * returns (lengths, greatest, drops): -1 for a dropped message, drops None or the counts
 * by reason. An error leaves the window as it was (see saved in open_run). */
static PyObject *open_messages(TransportKey *self, const Py_buffer *views, Py_ssize_t count,
                               Py_buffer *out, Py_ssize_t offset, uint32_t local,
                               PyObject *seen_obj, PyObject *greatest_obj)
{
    Py_buffer seen;
    Py_ssize_t *lengths, need = 0, drops[OPEN_REASONS] = {0};
    unsigned long long greatest;
    PyObject *list, *result = NULL;
    int failed = 0;
    uint8_t saved[REPLAY_SLOTS];

    greatest = PyLong_AsUnsignedLongLong(greatest_obj);
    if (PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(seen_obj, &seen, PyBUF_WRITABLE) < 0)
        return NULL;
    if (seen.len != REPLAY_SLOTS) {
        PyErr_Format(PyExc_ValueError, "the replay window has %d slots", REPLAY_SLOTS);
        goto done_seen;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t len = views[i].len;
        if (len > MAX_BODY) {
            PyErr_Format(PyExc_ValueError, "message %zd too long (%zd bytes)", i, len);
            goto done_seen;
        }
        if (len < TRANSPORT_MIN_SIZE)
            continue;
        if (len - TRANSPORT_MIN_SIZE > PY_SSIZE_T_MAX - need) {
            PyErr_SetString(PyExc_ValueError, "batch too long");
            goto done_seen;
        }
        need += len - TRANSPORT_MIN_SIZE; /* room for every message, as if all authenticate */
    }
    if (check_out(out, offset, need) < 0)
        goto done_seen;
    lengths = PyMem_Malloc((count ? (size_t)count : 1) * sizeof(Py_ssize_t));
    if (!lengths) {
        PyErr_NoMemory();
        goto done_seen;
    }
    if (begin_batch(self) < 0)
        goto done_lengths;

    Py_BEGIN_ALLOW_THREADS
    memcpy(saved, seen.buf, REPLAY_SLOTS);
    uint8_t *dst = (uint8_t *)out->buf + offset;
    uint64_t g = greatest;
    EVP_CIPHER_CTX *ctx = self->open;
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        const uint8_t *msg = views[i].buf;
        int n = (int)(views[i].len - TRANSPORT_MIN_SIZE), reason;
        uint8_t *plain = dst;
        lengths[i] = -1;
        if (n < 0) {
            reason = OPEN_TRANSPORT_TOO_SHORT;
        } else if (load32(msg + TRANSPORT_TYPE_AT) != MESSAGE_TRANSPORT
                   || load32(msg + TRANSPORT_RECEIVER_AT) != local) {
            reason = OPEN_WRONG_KEYPAIR;
        } else if (replay_rejects(seen.buf, g, load64(msg + TRANSPORT_COUNTER_AT))) {
            reason = OPEN_REPLAY;
        } else {
            uint64_t counter = load64(msg + TRANSPORT_COUNTER_AT);
            int opened = open_message(ctx, msg, n, plain, counter);
            if (opened < 0) {
                failed = 1;
                break;
            }
            if (!opened) {
                reason = OPEN_BAD_AUTH;
            } else if (!replay_validate(seen.buf, &g, counter)) {
                reason = OPEN_REPLAY;
            } else {
                lengths[i] = n;
                dst += n;
                continue;
            }
        }
        drops[reason]++;
    }
    greatest = g;
    Py_END_ALLOW_THREADS
    if (failed)
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 decryption failed");
    else if ((list = lengths_list(lengths, count)) != NULL) {
        PyObject *counts = drop_counts(drops, OPEN_REASONS);
        if (counts)
            result = Py_BuildValue("NKN", list, greatest, counts);
        else
            Py_DECREF(list);
    }
    if (!result)
        memcpy(seen.buf, saved, REPLAY_SLOTS);
    end_batch(self);
done_lengths:
    PyMem_Free(lengths);
done_seen:
    PyBuffer_Release(&seen);
    return result;
}

const char open_batch_doc[] = PyDoc_STR(
"open_batch(messages, out, offset, local_index, seen, greatest)\n"
"    -> (lengths, greatest, drops)\n\n"
"Keypair.decrypt_batch for a sequence of messages: each authenticated one is checked\n"
"against the replay window (`seen`, the window's 8192-byte ring, updated in place, and its\n"
"greatest counter, returned updated) and its padded plaintext written back to back from\n"
"out[offset:]. lengths has -1 for a dropped message; drops is None, or the counts\n"
"(too_short, wrong_keypair, bad_auth, replay). A too-short `out` (room for every message)\n"
"raises ValueError before anything is written; any error leaves `seen` as it was.");

PyObject *TransportKey_open_batch(TransportKey *self, PyObject *args)
{
    PyObject *messages, *out_obj, *local_obj, *seen, *greatest, *seq, *result = NULL;
    Py_ssize_t offset;
    Py_buffer out, *views;
    Py_ssize_t count;
    uint32_t local;

    if (!PyArg_ParseTuple(args, "OOnOOO:open_batch", &messages, &out_obj, &offset, &local_obj,
                          &seen, &greatest)
        || parse_index(local_obj, "local_index", &local) < 0)
        return NULL;
    seq = PySequence_Tuple(messages);
    if (!seq)
        return NULL;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    count = PyTuple_GET_SIZE(seq);
    views = get_views(seq, count);
    if (views) {
        result = open_messages(self, views, count, &out, offset, local, seen, greatest);
        release_views(views, count);
    }
    PyBuffer_Release(&out);
    Py_DECREF(seq);
    return result;
}

/* Keypair.receive_run's loop (the reference is in keypair.py): see open_run_doc. */
typedef struct {
    uint8_t len; /* 4 or 16 */
    uint8_t addr[16];
} Source;

/* The IP length and source of a decrypted packet (vpn/core/wireguard/inner.py), or a drop
 * reason: a negative RUN_* code. */
static inline Py_ssize_t inner_packet(const uint8_t *p, Py_ssize_t n, const uint8_t **src,
                                      uint8_t *src_len)
{
    int version = n ? p[0] >> 4 : 0;
    Py_ssize_t length;
    if (version == 4) {
        if (n >= 20 && (length = (Py_ssize_t)p[2] << 8 | p[3]) >= 20 && length <= n) {
            *src = p + 12;
            *src_len = 4;
            return length;
        }
        return -RUN_DISHONEST_PACKET_SIZE;
    }
    if (version == 6) {
        if (n >= 40 && (length = 40 + ((Py_ssize_t)p[4] << 8 | p[5])) <= n) {
            *src = p + 8;
            *src_len = 16;
            return length;
        }
        return -RUN_DISHONEST_PACKET_SIZE;
    }
    return -RUN_INNER_NOT_IP;
}

/* The slot of a source among the call's distinct ones, adding it if new (the caller made
 * sure there is room). */
static inline uint32_t source_slot(Source *sources, int *count, const uint8_t *src,
                                   uint8_t len)
{
    for (int i = *count - 1; i >= 0; i--) /* newest first: a batch is mostly one flow */
        if (sources[i].len == len && memcmp(sources[i].addr, src, len) == 0)
            return (uint32_t)i;
    sources[*count].len = len;
    memcpy(sources[*count].addr, src, len);
    return (uint32_t)(*count)++;
}

const char open_run_doc[] = PyDoc_STR(
"open_run(data, segment_size, start, out, offset, local_index, seen, greatest, records)\n"
"    -> (stop, offset, nrec, greatest, fresh, nbytes, drops, sources)\n\n"
"Keypair.receive_run: open the transport messages for `local_index` found one after the\n"
"other in data[start:] (each segment_size bytes, the last possibly shorter), checking each\n"
"against the replay window (`seen`, updated in place; `greatest`, returned updated) and its\n"
"plaintext as an IP packet. Stops before the first datagram that is not such a message, once\n"
"`records` is full or MAX_SOURCES distinct sources were seen. Each good packet is written at\n"
"out[offset:] and recorded as (offset, ip length, source slot), three little-endian uint32\n"
"from records[0], nrec of them; `sources` lists the distinct inner sources by slot, for the\n"
"caller's cryptokey-routing check. fresh and nbytes count the messages (and their bytes)\n"
"that authenticated and were new, keepalives included; drops is None or the counts\n"
"(wrong_keypair, bad_auth, replay, inner_not_ip, dishonest_packet_size). Any error leaves\n"
"`seen` as it was.");

PyObject *TransportKey_open_run(TransportKey *self, PyObject *args)
{
    PyObject *local_obj, *seen_obj, *greatest_obj, *result = NULL, *sources_list = NULL;
    Py_buffer data, out, seen, records;
    Py_ssize_t segment_size, start, offset, nrec = 0, capacity, fresh = 0, nbytes = 0;
    Py_ssize_t drops[RUN_REASONS] = {0};
    unsigned long long greatest;
    uint32_t local;
    Source sources[MAX_SOURCES];
    int nsources = 0, failed = 0;
    /* The window before the batch. Its slots change in place while the new greatest only
     * comes back in the result: a call that raises (OpenSSL failed, no memory for the
     * result) puts them back and stays busy until then, so the window moves only with a
     * greatest the caller gets, and no message can be accepted twice. */
    uint8_t saved[REPLAY_SLOTS];

    if (!PyArg_ParseTuple(args, "y*nnw*nOOOw*:open_run", &data, &segment_size, &start, &out,
                          &offset, &local_obj, &seen_obj, &greatest_obj, &records))
        return NULL;
    if (PyObject_GetBuffer(seen_obj, &seen, PyBUF_WRITABLE) < 0)
        goto done_buffers;
    greatest = PyLong_AsUnsignedLongLong(greatest_obj);
    if (PyErr_Occurred() || parse_index(local_obj, "local_index", &local) < 0)
        goto done_seen;
    capacity = records.len / RECORD_SIZE;
    if (seen.len != REPLAY_SLOTS) {
        PyErr_Format(PyExc_ValueError, "the replay window has %d slots", REPLAY_SLOTS);
        goto done_seen;
    }
    if (segment_size < 1 || start < 0 || start > data.len || data.len > MAX_BODY || out.len > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "open_run: segment_size or start out of range");
        goto done_seen;
    }
    /* Room for every plaintext, as if all of data[start:] were messages that authenticate. */
    if (check_out(&out, offset, data.len - start) < 0 || begin_batch(self) < 0)
        goto done_seen;

    Py_BEGIN_ALLOW_THREADS
    memcpy(saved, seen.buf, REPLAY_SLOTS);
    const uint8_t *base = data.buf;
    uint8_t *plain_base = out.buf, *rec = (uint8_t *)records.buf;
    Py_ssize_t pos = start, off = offset;
    uint64_t g = greatest;
    EVP_CIPHER_CTX *ctx = self->open;
    while (pos < data.len) {
        Py_ssize_t end = data.len - pos > segment_size ? pos + segment_size : data.len;
        const uint8_t *msg = base + pos;
        Py_ssize_t size = end - pos;
        int n = (int)(size - TRANSPORT_MIN_SIZE);
        uint8_t *plain = plain_base + off;
        if (size < TRANSPORT_MIN_SIZE || msg[TRANSPORT_TYPE_AT] != MESSAGE_TRANSPORT
            || load32(msg + TRANSPORT_RECEIVER_AT) != local || nrec == capacity || nsources == MAX_SOURCES)
            break;
        pos = end;
        if (load32(msg + TRANSPORT_TYPE_AT) != MESSAGE_TRANSPORT) {
            drops[RUN_WRONG_KEYPAIR]++;
            continue;
        }
        uint64_t counter = load64(msg + TRANSPORT_COUNTER_AT);
        if (replay_rejects(seen.buf, g, counter)) {
            drops[RUN_REPLAY]++;
            continue;
        }
        int opened = open_message(ctx, msg, n, plain, counter);
        if (opened < 0) {
            failed = 1;
            break;
        }
        if (!opened) {
            drops[RUN_BAD_AUTH]++;
            continue;
        }
        if (!replay_validate(seen.buf, &g, counter)) {
            drops[RUN_REPLAY]++;
            continue;
        }
        fresh++;
        nbytes += size;
        if (n == 0)
            continue; /* a keepalive */
        const uint8_t *src = NULL;
        uint8_t src_len = 0;
        Py_ssize_t length = inner_packet(plain, n, &src, &src_len);
        if (length < 0) {
            drops[-length]++;
            continue;
        }
        uint8_t *r = rec + RECORD_SIZE * nrec++;
        store32(r + RECORD_OFFSET_AT, (uint32_t)off);
        store32(r + RECORD_LENGTH_AT, (uint32_t)length);
        store32(r + RECORD_SLOT_AT, source_slot(sources, &nsources, src, src_len));
        off += n;
    }
    start = pos;
    offset = off;
    greatest = g;
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 decryption failed");
        goto done_batch;
    }
    sources_list = PyList_New(nsources);
    if (!sources_list)
        goto done_batch;
    for (int i = 0; i < nsources; i++) {
        PyObject *s = PyBytes_FromStringAndSize((const char *)sources[i].addr, sources[i].len);
        if (!s)
            goto done_batch;
        PyList_SET_ITEM(sources_list, i, s);
    }
    PyObject *counts = drop_counts(drops, RUN_REASONS);
    if (counts)
        result = Py_BuildValue("nnnKnnNO", start, offset, nrec, greatest, fresh, nbytes, counts,
                               sources_list);
done_batch:
    if (!result)
        memcpy(seen.buf, saved, REPLAY_SLOTS);
    end_batch(self);
done_seen:
    Py_XDECREF(sources_list);
    PyBuffer_Release(&seen);
done_buffers:
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    PyBuffer_Release(&records);
    return result;
}
