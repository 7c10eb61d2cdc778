/* Opening for _transport.c: a batch of messages (open_batch, Keypair.decrypt_batch), and a
 * GRO receive's run of them in two stages, as the kernel and wireguard-go do it: open_run
 * (Keypair.open_run: the AEAD and the inner checks, no window state changed, so it can run
 * in parallel) and accept_run (Keypair.accept_run: the replay window and the records, per
 * keypair in order). The replay window is replay.h's. */
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
    EVP_CIPHER_CTX *ctx;
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
    if (!(ctx = begin_batch(self, OPENING)))
        goto done_lengths;

    Py_BEGIN_ALLOW_THREADS
    memcpy(saved, seen.buf, REPLAY_SLOTS);
    uint8_t *dst = (uint8_t *)out->buf + offset;
    uint64_t g = greatest;
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
    end_batch(self, OPENING, ctx);
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

/* open_run's distinct inner sources (the reference is Keypair._open_run_python). */
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
"open_run(data, segment_size, start, out, offset, local_index, capacity, opened, seen,\n"
"         greatest) -> (stop, offset, count, drops, sources)\n\n"
"Keypair.open_run, the stage of a GRO receive's run that needs no replay window state (it\n"
"may run beside other calls): open the transport messages for `local_index` found one\n"
"after the other in data[start:] (each segment_size bytes, the last possibly shorter) and\n"
"check each plaintext as an IP packet. Stops before the first datagram that is not such a\n"
"message, once `capacity` packets or MAX_SOURCES distinct sources were seen, or once\n"
"`opened` is full. A counter at the message limit is refused before its AEAD, and so is one\n"
"the window `seen` (read only; None: none) with `greatest` already refuses. Each message\n"
"that authenticated is described in `opened` (OPENED, count of them, from opened[0]); a\n"
"packet's plaintext stays at out[offset:] (the returned offset is past the last). sources\n"
"lists the distinct inner sources by slot; drops is None or the counts (wrong_keypair,\n"
"bad_auth, replay, inner_not_ip, dishonest_packet_size), here only the first three.");

PyObject *TransportKey_open_run(TransportKey *self, PyObject *args)
{
    PyObject *local_obj, *seen_obj, *greatest_obj, *result = NULL, *sources_list = NULL;
    Py_buffer data, out, opened, seen = {0};
    Py_ssize_t segment_size, start, offset, capacity, room, count = 0, packets = 0;
    Py_ssize_t drops[RUN_REASONS] = {0};
    unsigned long long greatest = 0;
    uint32_t local;
    Source sources[MAX_SOURCES];
    int nsources = 0, failed = 0, hint;
    EVP_CIPHER_CTX *ctx;

    if (!PyArg_ParseTuple(args, "y*nnw*nOnw*OO:open_run", &data, &segment_size, &start, &out,
                          &offset, &local_obj, &capacity, &opened, &seen_obj, &greatest_obj))
        return NULL;
    hint = seen_obj != Py_None;
    if (hint && PyObject_GetBuffer(seen_obj, &seen, PyBUF_SIMPLE) < 0)
        goto done_buffers;
    greatest = PyLong_AsUnsignedLongLong(greatest_obj);
    if (PyErr_Occurred() || parse_index(local_obj, "local_index", &local) < 0)
        goto done_seen;
    if (hint && seen.len != REPLAY_SLOTS) {
        PyErr_Format(PyExc_ValueError, "the replay window has %d slots", REPLAY_SLOTS);
        goto done_seen;
    }
    if (segment_size < 1 || start < 0 || start > data.len || data.len > MAX_BODY
        || out.len > UINT32_MAX || capacity < 0) {
        PyErr_SetString(PyExc_ValueError, "open_run: segment_size, start or capacity out of range");
        goto done_seen;
    }
    room = opened.len / OPENED_SIZE;
    /* Room for every plaintext, as if all of data[start:] were messages that authenticate. */
    if (check_out(&out, offset, data.len - start) < 0 || !(ctx = begin_batch(self, OPENING)))
        goto done_seen;

    Py_BEGIN_ALLOW_THREADS
    const uint8_t *base = data.buf, *window = hint ? seen.buf : NULL;
    uint8_t *plain_base = out.buf, *entries = opened.buf;
    Py_ssize_t pos = start, off = offset;
    uint64_t g = greatest;
    while (pos < data.len) {
        Py_ssize_t end = data.len - pos > segment_size ? pos + segment_size : data.len;
        const uint8_t *msg = base + pos;
        Py_ssize_t size = end - pos;
        int n = (int)(size - TRANSPORT_MIN_SIZE);
        uint8_t *plain = plain_base + off;
        if (size < TRANSPORT_MIN_SIZE || msg[TRANSPORT_TYPE_AT] != MESSAGE_TRANSPORT
            || load32(msg + TRANSPORT_RECEIVER_AT) != local || count == room
            || packets == capacity || nsources == MAX_SOURCES)
            break;
        pos = end;
        if (load32(msg + TRANSPORT_TYPE_AT) != MESSAGE_TRANSPORT) {
            drops[RUN_WRONG_KEYPAIR]++;
            continue;
        }
        uint64_t counter = load64(msg + TRANSPORT_COUNTER_AT);
        /* The limit, always; with a window, what it refuses already (it only moves forward,
         * so a window older than accept_run's can only let more through, never less). */
        if (window ? replay_rejects(window, g, counter) : counter >= REJECT_AFTER_MESSAGES) {
            drops[RUN_REPLAY]++;
            continue;
        }
        int authentic = open_message(ctx, msg, n, plain, counter);
        if (authentic < 0) {
            failed = 1;
            break;
        }
        if (!authentic) {
            drops[RUN_BAD_AUTH]++;
            continue;
        }
        uint32_t status = OPENED_KEEPALIVE, length = 0, slot = 0;
        if (n > 0) {
            const uint8_t *src = NULL;
            uint8_t src_len = 0;
            Py_ssize_t ip_length = inner_packet(plain, n, &src, &src_len);
            if (ip_length == -RUN_INNER_NOT_IP) {
                status = OPENED_INNER_NOT_IP;
            } else if (ip_length < 0) {
                status = OPENED_DISHONEST_PACKET_SIZE;
            } else {
                status = OPENED_PACKET;
                length = (uint32_t)ip_length;
                slot = source_slot(sources, &nsources, src, src_len);
                packets++;
            }
        }
        uint8_t *e = entries + OPENED_SIZE * count++;
        store64(e + OPENED_COUNTER_AT, counter);
        store32(e + OPENED_BYTES_AT, (uint32_t)size);
        store32(e + OPENED_OFFSET_AT, (uint32_t)off);
        store32(e + OPENED_LENGTH_AT, length);
        store32(e + OPENED_STATUS_AT, status);
        store32(e + OPENED_SLOT_AT, slot);
        if (status == OPENED_PACKET)
            off += n;
    }
    start = pos;
    offset = off;
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
        result = Py_BuildValue("nnnNO", start, offset, count, counts, sources_list);
done_batch:
    end_batch(self, OPENING, ctx);
done_seen:
    Py_XDECREF(sources_list);
    if (hint)
        PyBuffer_Release(&seen);
done_buffers:
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    PyBuffer_Release(&opened);
    return result;
}

const char accept_run_doc[] = PyDoc_STR(
"accept_run(opened, count, seen, greatest, records) -> (nrec, greatest, fresh, nbytes, drops)\n\n"
"Keypair.accept_run, the stage that runs per keypair in order: each of the `count` messages\n"
"open_run described in `opened` is checked against the replay window (`seen`, updated in\n"
"place; `greatest`, returned updated); a fresh packet is recorded as (offset, ip length,\n"
"source slot), three little-endian uint32 from records[0], nrec of them. fresh and nbytes\n"
"count the fresh messages (and their bytes), keepalives included; drops is None or the\n"
"counts (wrong_keypair, bad_auth, replay, inner_not_ip, dishonest_packet_size), here only\n"
"the last three. Too few records for the packets, or an unknown status, raise ValueError\n"
"before anything changes; any error leaves `seen` as it was.");

PyObject *accept_run(PyObject *module, PyObject *args)
{
    PyObject *greatest_obj, *result = NULL;
    Py_buffer opened, seen, records;
    Py_ssize_t count, packets = 0, nrec = 0, fresh = 0, nbytes = 0;
    Py_ssize_t drops[RUN_REASONS] = {0};
    unsigned long long greatest;
    /* The window before the call: its slots change in place while the new greatest only
     * comes back in the result, so a call that raises (no memory for the result) puts them
     * back, and no message can be accepted twice. */
    uint8_t saved[REPLAY_SLOTS];
    (void)module;

    if (!PyArg_ParseTuple(args, "y*nw*Ow*:accept_run", &opened, &count, &seen, &greatest_obj,
                          &records))
        return NULL;
    greatest = PyLong_AsUnsignedLongLong(greatest_obj);
    if (PyErr_Occurred())
        goto done;
    if (seen.len != REPLAY_SLOTS) {
        PyErr_Format(PyExc_ValueError, "the replay window has %d slots", REPLAY_SLOTS);
        goto done;
    }
    if (count < 0 || count > opened.len / OPENED_SIZE) {
        PyErr_SetString(PyExc_ValueError, "accept_run: count outside `opened`");
        goto done;
    }
    const uint8_t *entries = opened.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t status = load32(entries + OPENED_SIZE * i + OPENED_STATUS_AT);
        if (status >= OPENED_STATUSES) {
            PyErr_Format(PyExc_ValueError, "accept_run: entry %zd has no status %u", i, status);
            goto done;
        }
        packets += status == OPENED_PACKET;
    }
    if (packets > records.len / RECORD_SIZE) {
        PyErr_SetString(PyExc_ValueError, "accept_run: records too short for the packets");
        goto done;
    }
    /* The GIL stays held: a few comparisons per message, and nothing else can touch the
     * window meanwhile. */
    memcpy(saved, seen.buf, REPLAY_SLOTS);
    uint64_t g = greatest;
    uint8_t *rec = records.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *e = entries + OPENED_SIZE * i;
        uint32_t status = load32(e + OPENED_STATUS_AT);
        if (!replay_validate(seen.buf, &g, load64(e + OPENED_COUNTER_AT))) {
            drops[RUN_REPLAY]++;
            continue;
        }
        fresh++;
        nbytes += load32(e + OPENED_BYTES_AT);
        if (status == OPENED_PACKET) {
            uint8_t *r = rec + RECORD_SIZE * nrec++;
            store32(r + RECORD_OFFSET_AT, load32(e + OPENED_OFFSET_AT));
            store32(r + RECORD_LENGTH_AT, load32(e + OPENED_LENGTH_AT));
            store32(r + RECORD_SLOT_AT, load32(e + OPENED_SLOT_AT));
        } else if (status == OPENED_INNER_NOT_IP) {
            drops[RUN_INNER_NOT_IP]++;
        } else if (status == OPENED_DISHONEST_PACKET_SIZE) {
            drops[RUN_DISHONEST_PACKET_SIZE]++;
        }
    }
    PyObject *counts = drop_counts(drops, RUN_REASONS);
    if (counts)
        result = Py_BuildValue("nKnnN", nrec, (unsigned long long)g, fresh, nbytes, counts);
    if (!result)
        memcpy(seen.buf, saved, REPLAY_SLOTS);
done:
    PyBuffer_Release(&opened);
    PyBuffer_Release(&seen);
    PyBuffer_Release(&records);
    return result;
}
