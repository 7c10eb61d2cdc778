/* Opening for _transport.c: one message (open_message, for transport_run.c's runs too) and a
 * batch of them (open_batch, Keypair.decrypt_batch). The replay window is replay.h's. */
#include "transport.h"

#include <openssl/crypto.h>

#include "replay.h"

/* Open one message's n-byte body into plain: 1 if it authenticated, 0 if not, -1 if OpenSSL
 * itself failed; unless 1, plain is wiped: no unauthenticated plaintext stays. */
int open_message(EVP_CIPHER_CTX *ctx, const uint8_t *msg, int n, uint8_t *plain,
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
