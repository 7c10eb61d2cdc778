/* Sealing for _transport.c: whole batches of packets (seal_batch) and the segments the GSO
 * split left in place (seal_segments), as Keypair.encrypt_batch and seal_segments do. */
#include "transport.h"

static const uint8_t zero_pad[PADDING_MULTIPLE];

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
    Py_ssize_t offset, count, full, last, gap, tail, mtu, size, last_size, stride;
    Py_buffer out;
    uint32_t receiver;
    unsigned long long first;
    EVP_CIPHER_CTX *ctx;
    int failed = 0;

    if (!PyArg_ParseTuple(args, "w*nnnnnnnOO:seal_segments", &out, &offset, &count, &full,
                          &last, &gap, &tail, &mtu, &receiver_obj, &counter_obj))
        return NULL;
    if (parse_sealing(receiver_obj, counter_obj, count, &receiver, &first) < 0)
        goto done;
    /* Sizes first (all small enough that the products below cannot overflow), then the
     * layout: every message within its own segment's slot, the last segment within out. */
    if (count < 1 || full < 0 || full > 0xffff || last < 0 || last > full || gap < 0
        || gap > 0xffff || tail < 0 || tail > 0xffff || count > (PY_SSIZE_T_MAX >> 20)) {
        PyErr_SetString(PyExc_ValueError, "seal_segments: count, full, last, gap or tail out "
                        "of range");
        goto done;
    }
    stride = gap + full + tail;
    size = TRANSPORT_HEADER_SIZE + padded_length(full, mtu) + AEAD_TAG_LEN;
    last_size = TRANSPORT_HEADER_SIZE + padded_length(last, mtu) + AEAD_TAG_LEN;
    if (size > stride || last_size > gap + last + tail) {
        PyErr_SetString(PyExc_ValueError, "seal_segments: a message would not fit in its "
                        "segment's slot (gap + tail too small)");
        goto done;
    }
    if (check_out(&out, offset, (count - 1) * stride + gap + last + tail) < 0
        || !(ctx = begin_batch(self, SEALING)))
        goto done;

    Py_BEGIN_ALLOW_THREADS
    uint8_t *base = (uint8_t *)out.buf + offset, nonce[12];
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        uint64_t counter = first + (uint64_t)i;
        int n = (int)(i + 1 < count ? full : last), len;
        int body = (int)((i + 1 < count ? size : last_size) - TRANSPORT_MIN_SIZE);
        uint8_t *dst = base + i * size, *ct = dst + TRANSPORT_HEADER_SIZE;
        /* Segment i moves down to its message (never onto a later one: size <= stride);
         * OpenSSL encrypts in place only when input and output are the same bytes. */
        memmove(ct, base + gap + i * stride, (size_t)n);
        memset(ct + n, 0, (size_t)(body - n));
        store32(dst + TRANSPORT_TYPE_AT, MESSAGE_TRANSPORT);
        store32(dst + TRANSPORT_RECEIVER_AT, receiver);
        store64(dst + TRANSPORT_COUNTER_AT, counter);
        make_nonce(nonce, counter);
        failed = EVP_EncryptInit_ex2(ctx, NULL, NULL, nonce, NULL) != 1
                 || EVP_EncryptUpdate(ctx, ct, &len, ct, body) != 1
                 || EVP_EncryptFinal_ex(ctx, ct + body, &len) != 1
                 || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, AEAD_TAG_LEN, ct + body) != 1;
    }
    Py_END_ALLOW_THREADS
    end_batch(self, SEALING, ctx);
    if (failed)
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 encryption failed");
    else
        result = Py_BuildValue("nn", size, last_size);
done:
    PyBuffer_Release(&out);
    return result;
}
