/* A GRO receive's runs of messages for _transport.c, opened in two stages as the kernel and
 * wireguard-go do it: open_run (Keypair.open_run: the AEAD and the inner checks, no window
 * state changed, so it can run in parallel), open_runs (a worker job's runs of one keypair in
 * one call, the GIL released once) and accept_run (Keypair.accept_run: the replay window and
 * the records, per keypair in order). The replay window is replay.h's. */
#include "transport.h"

#include "replay.h"

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

/* One stretch of a run opened (open_stretch): where it stopped, the plaintexts' end, the
 * messages described, the drops before the AEAD and the distinct inner sources. */
typedef struct {
    Py_ssize_t run; /* open_runs: the run's position in its list */
    Py_ssize_t stop, offset, count;
    Py_ssize_t drops[RUN_REASONS];
    Source sources[MAX_SOURCES];
    int nsources;
} Stretch;

/* open_run's loop, without the GIL: the messages for `local` from base[pos:len] into
 * plain_base[offset:], described in entries (room of them); -1 if OpenSSL itself failed. */
static int open_stretch(EVP_CIPHER_CTX *ctx, const uint8_t *base, Py_ssize_t len,
                        Py_ssize_t segment_size, Py_ssize_t pos, uint8_t *plain_base,
                        Py_ssize_t off, uint32_t local, Py_ssize_t capacity, uint8_t *entries,
                        Py_ssize_t room, const uint8_t *window, uint64_t g, Stretch *st)
{
    Py_ssize_t count = 0, packets = 0;
    int nsources = 0, failed = 0;
    memset(st->drops, 0, sizeof(st->drops));
    while (pos < len) {
        Py_ssize_t end = len - pos > segment_size ? pos + segment_size : len;
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
            st->drops[RUN_WRONG_KEYPAIR]++;
            continue;
        }
        uint64_t counter = load64(msg + TRANSPORT_COUNTER_AT);
        /* The limit, always; with a window, what it refuses already (it only moves forward,
         * so a window older than accept_run's can only let more through, never less). */
        if (window ? replay_rejects(window, g, counter) : counter >= REJECT_AFTER_MESSAGES) {
            st->drops[RUN_REPLAY]++;
            continue;
        }
        int authentic = open_message(ctx, msg, n, plain, counter);
        if (authentic < 0) {
            failed = 1;
            break;
        }
        if (!authentic) {
            st->drops[RUN_BAD_AUTH]++;
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
                slot = source_slot(st->sources, &nsources, src, src_len);
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
    st->stop = pos;
    st->offset = off;
    st->count = count;
    st->nsources = nsources;
    return failed ? -1 : 0;
}

/* A stretch's (drops, sources) for Python: drops None or the counts. */
static PyObject *stretch_sources(const Stretch *st)
{
    PyObject *list = PyList_New(st->nsources);
    for (int i = 0; list && i < st->nsources; i++) {
        PyObject *s = PyBytes_FromStringAndSize((const char *)st->sources[i].addr,
                                                st->sources[i].len);
        if (!s)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, s);
    }
    return list;
}

static void openssl_failed(void)
{
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 decryption failed");
}

PyObject *TransportKey_open_run(TransportKey *self, PyObject *args)
{
    PyObject *local_obj, *seen_obj, *greatest_obj, *result = NULL;
    Py_buffer data, out, opened, seen = {0};
    Py_ssize_t segment_size, start, offset, capacity, room;
    unsigned long long greatest = 0;
    uint32_t local;
    int hint, failed;
    EVP_CIPHER_CTX *ctx;
    Stretch st;

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
    failed = open_stretch(ctx, data.buf, data.len, segment_size, start, out.buf, offset, local,
                          capacity, opened.buf, room, hint ? seen.buf : NULL, greatest, &st);
    Py_END_ALLOW_THREADS
    end_batch(self, OPENING, ctx);
    if (failed) {
        openssl_failed();
        goto done_seen;
    }
    PyObject *sources = stretch_sources(&st), *counts = NULL;
    if (sources && (counts = drop_counts(st.drops, RUN_REASONS)))
        result = Py_BuildValue("nnnNN", st.stop, st.offset, st.count, counts, sources);
    else
        Py_XDECREF(sources);
done_seen:
    if (hint)
        PyBuffer_Release(&seen);
done_buffers:
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    PyBuffer_Release(&opened);
    return result;
}

const char open_runs_doc[] = PyDoc_STR(
"open_runs(runs, out, local_index, opened) -> [(run, stop, count, drops, sources), ...]\n\n"
"open_run (without a window) of each run, a list of (data, segment_size, pos, stop, out_at):\n"
"its messages in data[pos:stop], their plaintexts from out[out_at:], described in `opened`\n"
"one after the other from opened[0], in as many stretches as MAX_SOURCES or `opened`'s room\n"
"take; one call, the GIL released once for all of them (a worker's job). Each stretch is\n"
"(its run's position in runs, where it stopped, its messages described, drops, sources) as\n"
"open_run gives them; a stretch that makes no progress raises RuntimeError.");

/* The runs' buffers and numbers, checked with the GIL held. */
typedef struct {
    Py_buffer data;
    Py_ssize_t segment_size, pos, stop, out_at;
} RunView;

static int parse_runs(PyObject *items, Py_buffer *out, RunView *runs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        RunView *r = &runs[i];
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (!PyTuple_Check(item)) {
            PyErr_Format(PyExc_TypeError, "open_runs: run %zd is not a tuple", i);
            return (int)i;
        }
        if (!PyArg_ParseTuple(item, "y*nnnn:open_runs", &r->data, &r->segment_size, &r->pos,
                              &r->stop, &r->out_at))
            return (int)i;
        if (r->segment_size < 1 || r->pos < 0 || r->pos > r->stop || r->stop > r->data.len
            || r->data.len > MAX_BODY) {
            PyErr_Format(PyExc_ValueError, "open_runs: run %zd's segment_size, pos or stop out "
                         "of range", i);
            return (int)i + 1;
        }
        if (check_out(out, r->out_at, r->stop - r->pos) < 0)
            return (int)i + 1;
    }
    return -1;
}

PyObject *TransportKey_open_runs(TransportKey *self, PyObject *args)
{
    PyObject *list, *items = NULL, *local_obj, *result = NULL;
    Py_buffer out, opened;
    uint32_t local;
    EVP_CIPHER_CTX *ctx;
    Py_ssize_t n, parsed = 0, nst = 0, room;
    Stretch *st = NULL;
    RunView *runs = NULL;
    int failed = 0, stuck = 0;

    if (!PyArg_ParseTuple(args, "O!w*Ow*:open_runs", &PyList_Type, &list, &out, &local_obj,
                          &opened))
        return NULL;
    /* A tuple of the runs: the buffers' code may run Python that changes the list. */
    if (!(items = PySequence_Tuple(list)) || parse_index(local_obj, "local_index", &local) < 0)
        goto done;
    n = PyTuple_GET_SIZE(items);
    if (out.len > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "open_runs: out too long");
        goto done;
    }
    room = opened.len / OPENED_SIZE;
    /* The stretches a run can take: one per MAX_SOURCES packets (what ends a stretch that
     * made progress short of the run's stop, the room being the runs' messages), the last,
     * and one that makes none (a message of another keypair, or no room). */
    Py_ssize_t most = 0;
    if (!(runs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(RunView))))
        goto nomem;
    int bad = parse_runs(items, &out, runs, n);
    parsed = bad < 0 ? n : bad;
    if (bad >= 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        most += 2 + ((runs[i].stop - runs[i].pos) / runs[i].segment_size + 1) / MAX_SOURCES;
    if (!(st = PyMem_Malloc(sizeof(Stretch) * (size_t)(most ? most : 1))))
        goto nomem;
    if (!(ctx = begin_batch(self, OPENING)))
        goto done;

    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < n && !failed && !stuck; i++) {
        RunView *r = &runs[i];
        Py_ssize_t pos = r->pos, off = r->out_at;
        while (pos < r->stop && nst < most) {
            Stretch *s = &st[nst++];
            failed = open_stretch(ctx, r->data.buf, r->stop, r->segment_size, pos, out.buf, off,
                                  local, room - at, (uint8_t *)opened.buf + OPENED_SIZE * at,
                                  room - at, NULL, 0, s);
            if (failed || s->stop <= pos) {
                stuck = !failed;
                break;
            }
            s->run = i;
            at += s->count;
            pos = s->stop;
            off = s->offset;
        }
        stuck = stuck || pos < r->stop; /* (no room for another stretch: cannot happen) */
    }
    Py_END_ALLOW_THREADS
    end_batch(self, OPENING, ctx);
    if (failed) {
        openssl_failed();
        goto done;
    }
    if (stuck) {
        PyErr_SetString(PyExc_RuntimeError, "open_runs: a run made no progress");
        goto done;
    }
    result = PyList_New(nst);
    for (Py_ssize_t k = 0; result && k < nst; k++) {
        PyObject *sources = stretch_sources(&st[k]), *counts = NULL, *item = NULL;
        if (sources && (counts = drop_counts(st[k].drops, RUN_REASONS)))
            item = Py_BuildValue("nnnNN", st[k].run, st[k].stop, st[k].count, counts,
                                 sources);
        else
            Py_XDECREF(sources);
        if (!item)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, k, item);
    }
    goto done;
nomem:
    PyErr_NoMemory();
done:
    for (Py_ssize_t i = 0; i < parsed; i++)
        PyBuffer_Release(&runs[i].data);
    PyMem_Free(runs);
    PyMem_Free(st);
    Py_XDECREF(items);
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
