/* Sealing for _transport.c: whole batches of packets (seal_batch) and the segments the GSO
 * split left in place (seal_segments), as Keypair.encrypt_batch and seal_segments do. */
#include "transport.h"

static const uint8_t zero_pad[PADDING_MULTIPLE];

/* One super-packet's segments as the split laid them out, and their messages' sizes. */
struct run {
    Py_ssize_t count, full, last, size, last_size;
};

/* The receiver index and first counter of a sealing batch of `count` messages: never past
 * the message limit, so a counter can neither wrap nor reach a reserved value. */
static int parse_sealing(PyObject *receiver_obj, PyObject *counter_obj, Py_ssize_t count,
                         uint32_t *receiver, unsigned long long *first)
{
    if (parse_index(receiver_obj, "receiver_index", receiver) < 0)
        return -1;
    *first = PyLong_AsUnsignedLongLong(counter_obj);
    if (PyErr_Occurred())
        return -1;
    if (count < 0 || *first > REJECT_AFTER_MESSAGES
        || (uint64_t)count > REJECT_AFTER_MESSAGES - *first) {
        PyErr_SetString(PyExc_ValueError, "batch passes the message limit");
        return -1;
    }
    return 0;
}

const char seal_batch_doc[] = PyDoc_STR(
"seal_batch(packets, out, offset, mtu, receiver_index, first_counter) -> list[int]\n\n"
"Write one transport message per packet back to back from out[offset:] (counters\n"
"first_counter, +1, ...; plaintexts zero-padded as keypair.padded_length does) and return\n"
"their lengths. A too-short `out` raises ValueError before anything is written.");

PyObject *TransportKey_seal_batch(TransportKey *self, PyObject *args)
{
    PyObject *packets, *out_obj, *receiver_obj, *counter_obj, *seq, *result = NULL;
    Py_ssize_t offset, mtu, count, need = 0;
    Py_buffer out, *views;
    Py_ssize_t *lengths;
    uint32_t receiver;
    unsigned long long first;
    EVP_CIPHER_CTX *ctx;
    int failed = 0;

    if (!PyArg_ParseTuple(args, "OOnnOO:seal_batch", &packets, &out_obj, &offset, &mtu,
                          &receiver_obj, &counter_obj))
        return NULL;
    seq = PySequence_Tuple(packets);
    if (!seq)
        return NULL;
    count = PyTuple_GET_SIZE(seq);
    if (parse_sealing(receiver_obj, counter_obj, count, &receiver, &first) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    views = get_views(seq, count);
    lengths = views ? PyMem_Malloc((count ? (size_t)count : 1) * sizeof(Py_ssize_t)) : NULL;
    if (!lengths) {
        if (views) {
            release_views(views, count);
            PyErr_NoMemory();
        }
        goto done_out;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = views[i].len;
        if (n > MAX_BODY) {
            PyErr_Format(PyExc_ValueError, "packet %zd too long (%zd bytes)", i, n);
            goto done;
        }
        lengths[i] = TRANSPORT_HEADER_SIZE + padded_length(n, mtu) + AEAD_TAG_LEN;
        if (lengths[i] > PY_SSIZE_T_MAX - need) {
            PyErr_SetString(PyExc_ValueError, "batch too long");
            goto done;
        }
        need += lengths[i];
    }
    if (check_out(&out, offset, need) < 0 || !(ctx = begin_batch(self, SEALING)))
        goto done;

    Py_BEGIN_ALLOW_THREADS
    uint8_t *dst = (uint8_t *)out.buf + offset;
    uint8_t nonce[12];
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        uint64_t counter = first + (uint64_t)i;
        int n = (int)views[i].len, body = (int)(lengths[i] - TRANSPORT_MIN_SIZE), len;
        uint8_t *ct = dst + TRANSPORT_HEADER_SIZE;
        store32(dst + TRANSPORT_TYPE_AT, MESSAGE_TRANSPORT);
        store32(dst + TRANSPORT_RECEIVER_AT, receiver);
        store64(dst + TRANSPORT_COUNTER_AT, counter);
        make_nonce(nonce, counter);
        failed = EVP_EncryptInit_ex2(ctx, NULL, NULL, nonce, NULL) != 1
                 || EVP_EncryptUpdate(ctx, ct, &len, views[i].buf, n) != 1
                 || (body > n && EVP_EncryptUpdate(ctx, ct + n, &len, zero_pad, body - n) != 1)
                 || EVP_EncryptFinal_ex(ctx, ct + body, &len) != 1
                 || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, AEAD_TAG_LEN, ct + body) != 1;
        dst += lengths[i];
    }
    Py_END_ALLOW_THREADS
    end_batch(self, SEALING, ctx);
    if (failed)
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 encryption failed");
    else
        result = lengths_list(lengths, count);
done:
    PyMem_Free(lengths);
    release_views(views, count);
done_out:
    PyBuffer_Release(&out);
    Py_DECREF(seq);
    return result;
}

/* One run of segments the GSO split laid out (segment i at src + gap + i * stride, `full`
 * bytes but the last, `last`), sealed as messages back to back from dst (each `size` bytes
 * but the last, `last_size`), counters from `first`. dst <= src and size <= stride, so a
 * message never lands on a segment not yet sealed. Runs without the GIL; 0 on success. */
static int seal_run(EVP_CIPHER_CTX *ctx, uint8_t *dst, const uint8_t *src, const struct run *r,
                    Py_ssize_t gap, Py_ssize_t tail, uint32_t receiver, uint64_t first)
{
    Py_ssize_t stride = gap + r->full + tail;
    uint8_t nonce[12];
    for (Py_ssize_t i = 0; i < r->count; i++) {
        uint64_t counter = first + (uint64_t)i;
        int n = (int)(i + 1 < r->count ? r->full : r->last), len;
        int body = (int)((i + 1 < r->count ? r->size : r->last_size) - TRANSPORT_MIN_SIZE);
        uint8_t *ct = dst + TRANSPORT_HEADER_SIZE;
        /* Segment i moves down to its message (never onto a later one: size <= stride);
         * OpenSSL encrypts in place only when input and output are the same bytes. */
        memmove(ct, src + gap + i * stride, (size_t)n);
        memset(ct + n, 0, (size_t)(body - n));
        store32(dst + TRANSPORT_TYPE_AT, MESSAGE_TRANSPORT);
        store32(dst + TRANSPORT_RECEIVER_AT, receiver);
        store64(dst + TRANSPORT_COUNTER_AT, counter);
        make_nonce(nonce, counter);
        if (EVP_EncryptInit_ex2(ctx, NULL, NULL, nonce, NULL) != 1
            || EVP_EncryptUpdate(ctx, ct, &len, ct, body) != 1
            || EVP_EncryptFinal_ex(ctx, ct + body, &len) != 1
            || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, AEAD_TAG_LEN, ct + body) != 1)
            return -1;
        dst += i + 1 < r->count ? r->size : r->last_size;
    }
    return 0;
}

/* A run's sizes checked (all small enough that no product below can overflow) and its
 * messages' sizes set: every message within its own segment's slot. -1 with ValueError. */
static int plan_run(struct run *r, Py_ssize_t gap, Py_ssize_t tail, Py_ssize_t mtu,
                    const char *name)
{
    if (r->count < 1 || r->full < 0 || r->full > 0xffff || r->last < 0 || r->last > r->full
        || gap < 0 || gap > 0xffff || tail < 0 || tail > 0xffff
        || r->count > (PY_SSIZE_T_MAX >> 20)) {
        PyErr_Format(PyExc_ValueError, "%s: count, full, last, gap or tail out of range", name);
        return -1;
    }
    r->size = TRANSPORT_HEADER_SIZE + padded_length(r->full, mtu) + AEAD_TAG_LEN;
    r->last_size = TRANSPORT_HEADER_SIZE + padded_length(r->last, mtu) + AEAD_TAG_LEN;
    if (r->size > gap + r->full + tail || r->last_size > gap + r->last + tail) {
        PyErr_Format(PyExc_ValueError, "%s: a message would not fit in its segment's slot "
                     "(gap + tail too small)", name);
        return -1;
    }
    return 0;
}

/* The bytes a run's layout takes, from its first gap to its last tail. */
static Py_ssize_t run_extent(const struct run *r, Py_ssize_t gap, Py_ssize_t tail)
{
    return (r->count - 1) * (gap + r->full + tail) + gap + r->last + tail;
}

const char seal_segments_doc[] = PyDoc_STR(
"seal_segments(out, offset, count, full, last, gap, tail, mtu, receiver_index, first_counter)\n"
"    -> (size, last_size)\n\n"
"Keypair.seal_segments: seal in place the `count` plaintexts that _gso.split_into wrote at\n"
"out[offset:] (segment i at offset + gap + i * (gap + full + tail), `full` bytes long, the\n"
"last `last` bytes), as transport messages back to back from out[offset]: each `size` bytes\n"
"but the last, `last_size` bytes, ready for one UDP GSO send. A layout where a message would\n"
"not fit in its segment's slot, or out too short, raises ValueError before anything is\n"
"written.");

PyObject *TransportKey_seal_segments(TransportKey *self, PyObject *args)
{
    PyObject *receiver_obj, *counter_obj, *result = NULL;
    Py_ssize_t offset, gap, tail, mtu;
    struct run r;
    Py_buffer out;
    uint32_t receiver;
    unsigned long long first;
    EVP_CIPHER_CTX *ctx;
    int failed;

    if (!PyArg_ParseTuple(args, "w*nnnnnnnOO:seal_segments", &out, &offset, &r.count, &r.full,
                          &r.last, &gap, &tail, &mtu, &receiver_obj, &counter_obj))
        return NULL;
    if (parse_sealing(receiver_obj, counter_obj, r.count, &receiver, &first) < 0
        || plan_run(&r, gap, tail, mtu, "seal_segments") < 0
        || check_out(&out, offset, run_extent(&r, gap, tail)) < 0
        || !(ctx = begin_batch(self, SEALING)))
        goto done;

    Py_BEGIN_ALLOW_THREADS
    uint8_t *base = (uint8_t *)out.buf + offset;
    failed = seal_run(ctx, base, base, &r, gap, tail, receiver, first);
    Py_END_ALLOW_THREADS
    end_batch(self, SEALING, ctx);
    if (failed)
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 encryption failed");
    else
        result = Py_BuildValue("nn", r.size, r.last_size);
done:
    PyBuffer_Release(&out);
    return result;
}

const char seal_runs_doc[] = PyDoc_STR(
"seal_runs(out, offset, runs, gap, tail, mtu, receiver_index, first_counter) -> list[int]\n\n"
"seal_segments for each (count, full, last) of `runs`, as _gso.split_runs laid them out\n"
"back to back from out[offset:] (run k's layout where run k - 1's last tail ends), counters\n"
"from first_counter on across the runs: the messages back to back from out[offset], and\n"
"their lengths. Every run is checked first (ValueError as seal_segments, before anything\n"
"is written); the GIL is released once.");

PyObject *TransportKey_seal_runs(TransportKey *self, PyObject *args)
{
    PyObject *runs_obj, *receiver_obj, *counter_obj, *seq, *result = NULL;
    Py_ssize_t offset, gap, tail, mtu, nruns, total = 0, need = 0;
    struct run *runs = NULL;
    Py_ssize_t *lengths = NULL;
    Py_buffer out;
    uint32_t receiver;
    unsigned long long first;
    EVP_CIPHER_CTX *ctx;
    int failed = 0;

    if (!PyArg_ParseTuple(args, "w*nOnnnOO:seal_runs", &out, &offset, &runs_obj, &gap, &tail,
                          &mtu, &receiver_obj, &counter_obj))
        return NULL;
    seq = PySequence_Fast(runs_obj, "seal_runs: runs must be a sequence");
    if (!seq)
        goto done_out;
    nruns = PySequence_Fast_GET_SIZE(seq);
    runs = PyMem_Malloc((nruns ? (size_t)nruns : 1) * sizeof(struct run));
    if (!runs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nruns; k++) {
        struct run *r = &runs[k];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "nnn:seal_runs", &r->count,
                              &r->full, &r->last)
            || plan_run(r, gap, tail, mtu, "seal_runs") < 0)
            goto done;
        /* Each at most 2**43 - 1 (plan_run's bounds): the sums cannot overflow first. */
        total += r->count;
        need += run_extent(r, gap, tail);
        if (total > (PY_SSIZE_T_MAX >> 20) || need > (PY_SSIZE_T_MAX >> 2)) {
            PyErr_SetString(PyExc_ValueError, "seal_runs: too many messages");
            goto done;
        }
    }
    if (parse_sealing(receiver_obj, counter_obj, total, &receiver, &first) < 0
        || check_out(&out, offset, need) < 0)
        goto done;
    lengths = PyMem_Malloc((total ? (size_t)total : 1) * sizeof(Py_ssize_t));
    if (!lengths) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(ctx = begin_batch(self, SEALING)))
        goto done;

    Py_BEGIN_ALLOW_THREADS
    uint8_t *src = (uint8_t *)out.buf + offset, *dst = src;
    uint64_t counter = first;
    Py_ssize_t m = 0;
    for (Py_ssize_t k = 0; k < nruns && !failed; k++) {
        const struct run *r = &runs[k];
        failed = seal_run(ctx, dst, src, r, gap, tail, receiver, counter) < 0;
        for (Py_ssize_t i = 0; i + 1 < r->count; i++)
            lengths[m++] = r->size;
        lengths[m++] = r->last_size;
        dst += (r->count - 1) * r->size + r->last_size;
        src += run_extent(r, gap, tail);
        counter += (uint64_t)r->count;
    }
    Py_END_ALLOW_THREADS
    end_batch(self, SEALING, ctx);
    if (failed)
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 encryption failed");
    else
        result = lengths_list(lengths, total);
done:
    PyMem_Free(lengths);
    PyMem_Free(runs);
    Py_XDECREF(seq);
done_out:
    PyBuffer_Release(&out);
    return result;
}
