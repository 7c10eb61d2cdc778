/* Native transport-message batches for vpn/core/wireguard/keypair.py (the readable reference:
 * Keypair.encrypt_batch, decrypt_batch and replay.ReplayWindow.validate).
 * Each call seals or opens a whole batch with the GIL released; everything else (keypair
 * rotation, limits, drop accounting) stays in Python.
 *
 * Why OpenSSL's libcrypto rather than libsodium (measured on the 2-core bench machine,
 * C loops, one message per call, Debian bookworm: OpenSSL 3.0.19, libsodium 1.0.18):
 *
 *                                  100 B seal   1420 B seal   1420 B open
 *   OpenSSL, one context per key,    0.63 us      1.10 us       1.06 us
 *     IV set by EVP_EncryptInit_ex2 (cheapest of CipherInit_ex(iv, -1), Init_ex2 and a
 *     full key+IV init, which costs 0.05 us more)
 *   libsodium *_ietf_*_detached      0.41 us      1.35 us       1.24 us
 *
 * A 64 KiB TSO super-packet is about 45 full segments and one short one: OpenSSL seals it
 * in about 50 us, libsodium in 61 us, and opens it in 48 us against 56 us. The other
 * direction's ACKs (52-100 B, roughly one per two segments) give libsodium back about
 * 0.25 us each, about 5 us per 64 KiB: OpenSSL still wins by 5-10 us each way, its bulk
 * rate uses this CPU's AVX-512, and it is the library Debian already has everywhere.
 * `cryptography` bundles its own OpenSSL; this module links the system's -lcrypto.
 *
 * The key is kept in the object (to key a context for each thread that uses it at once) and
 * in its OpenSSL contexts; zero() and dealloc wipe both (OPENSSL_cleanse, EVP_CIPHER_CTX_free).
 * Nothing here prints or returns key material.
 *
 * The module's pieces, one job each: this file (the TransportKey type, its contexts lent to each batch,
 * the module), transport_seal.c (seal_batch, seal_segments, seal_runs), transport_open.c
 * (open_batch, open_run, accept_run) and replay.h (the anti-replay window); wire facts come from
 * vpn/core/include/wire.h.
 */
#include "transport.h"

#include <openssl/crypto.h>

static EVP_CIPHER *chacha20_poly1305; /* fetched once: an implicit fetch per init is slower */

/* The idle contexts freed (EVP_CIPHER_CTX_free cleanses the key schedule each holds). */
static void free_idle(TransportKey *self)
{
    for (int d = 0; d < DIRECTIONS; d++) {
        while (self->idle_count[d])
            EVP_CIPHER_CTX_free(self->idle[d][--self->idle_count[d]]);
    }
}

/* Forget the key: its bytes and every idle context at once; a context a running batch holds
 * is freed when it comes back (end_batch). */
static void wipe(TransportKey *self)
{
    OPENSSL_cleanse(self->key, KEY_LEN);
    self->keyed = 0;
    free_idle(self);
}

static int TransportKey_init(TransportKey *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:TransportKey", kwlist, &key))
        return -1;
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "a transport key is %d bytes", KEY_LEN);
        return -1;
    }
    if (self->running) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_RuntimeError, "TransportKey in use");
        return -1;
    }
    wipe(self);
    memcpy(self->key, key.buf, KEY_LEN);
    PyBuffer_Release(&key);
    /* One context each way now: OpenSSL's failure shows here rather than in a batch. */
    EVP_CIPHER_CTX *seal, *open = NULL;
    self->keyed = 1;
    if (!(seal = begin_batch(self, SEALING)) || !(open = begin_batch(self, OPENING))) {
        self->keyed = 0; /* so that end_batch frees it */
        if (seal)
            end_batch(self, SEALING, seal);
        wipe(self);
        return -1;
    }
    end_batch(self, SEALING, seal);
    end_batch(self, OPENING, open);
    return 0;
}

static void TransportKey_dealloc(TransportKey *self)
{
    wipe(self); /* never running here: a running batch holds a reference */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *TransportKey_zero(TransportKey *self, PyObject *Py_UNUSED(ignored))
{
    wipe(self);
    Py_RETURN_NONE;
}

/* A context of this key for one batch in `direction`, the caller's alone until end_batch
 * (both with the GIL held): an idle one, or one keyed now. ValueError once zeroed. */
EVP_CIPHER_CTX *begin_batch(TransportKey *self, int direction)
{
    EVP_CIPHER_CTX *ctx;
    int ok;

    if (!self->keyed) {
        PyErr_SetString(PyExc_ValueError, "TransportKey was zeroed");
        return NULL;
    }
    if (self->idle_count[direction]) {
        ctx = self->idle[direction][--self->idle_count[direction]];
    } else {
        ctx = EVP_CIPHER_CTX_new();
        ok = ctx && (direction == SEALING
                     ? EVP_EncryptInit_ex2(ctx, chacha20_poly1305, self->key, NULL, NULL)
                     : EVP_DecryptInit_ex2(ctx, chacha20_poly1305, self->key, NULL, NULL)) == 1;
        if (!ok) {
            EVP_CIPHER_CTX_free(ctx);
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up ChaCha20-Poly1305");
            return NULL;
        }
    }
    self->running++;
    return ctx;
}

/* The context back: idle again, or freed when the key was zeroed meanwhile or enough are
 * idle already. */
void end_batch(TransportKey *self, int direction, EVP_CIPHER_CTX *ctx)
{
    self->running--;
    if (self->keyed && self->idle_count[direction] < IDLE_CONTEXTS)
        self->idle[direction][self->idle_count[direction]++] = ctx;
    else
        EVP_CIPHER_CTX_free(ctx);
}

/* A receiver index from Python into `out`: a 32-bit unsigned integer, or an exception
 * naming the argument. */
int parse_index(PyObject *obj, const char *name, uint32_t *out)
{
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (PyErr_Occurred())
        return -1;
    if (v > 0xffffffffUL) {
        PyErr_Format(PyExc_OverflowError, "%s is a 32-bit unsigned integer", name);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* A writable, contiguous `out` with at least `need` bytes from `offset`. */
int check_out(Py_buffer *out, Py_ssize_t offset, Py_ssize_t need)
{
    if (offset < 0 || offset > out->len) {
        PyErr_Format(PyExc_ValueError, "offset %zd outside out (%zd bytes)", offset, out->len);
        return -1;
    }
    if (need > out->len - offset) {
        PyErr_Format(PyExc_ValueError,
                     "out too short: the batch needs %zd bytes from offset %zd, out has %zd",
                     need, offset, out->len - offset);
        return -1;
    }
    return 0;
}

/* Buffer views of every item of a tuple (released by release_views): a snapshot, not the
 * caller's list, which an item's export (__buffer__, Python 3.12+) or another thread could
 * shrink under this loop. */
Py_buffer *get_views(PyObject *items, Py_ssize_t count)
{
    Py_buffer *views = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_buffer));
    if (!views)
        return (Py_buffer *)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(items, i), &views[i], PyBUF_SIMPLE) < 0) {
            for (Py_ssize_t j = 0; j < i; j++)
                PyBuffer_Release(&views[j]);
            PyMem_Free(views);
            return NULL;
        }
    }
    return views;
}

void release_views(Py_buffer *views, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

PyObject *lengths_list(const Py_ssize_t *lengths, Py_ssize_t count)
{
    PyObject *list = PyList_New(count);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *n = PyLong_FromSsize_t(lengths[i]);
        if (!n) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, n);
    }
    return list;
}

static PyMethodDef TransportKey_methods[] = {
    {"seal_batch", (PyCFunction)TransportKey_seal_batch, METH_VARARGS, seal_batch_doc},
    {"seal_segments", (PyCFunction)TransportKey_seal_segments, METH_VARARGS,
     seal_segments_doc},
    {"seal_runs", (PyCFunction)TransportKey_seal_runs, METH_VARARGS, seal_runs_doc},
    {"open_batch", (PyCFunction)TransportKey_open_batch, METH_VARARGS, open_batch_doc},
    {"open_run", (PyCFunction)TransportKey_open_run, METH_VARARGS, open_run_doc},
    {"open_runs", (PyCFunction)TransportKey_open_runs, METH_VARARGS, open_runs_doc},
    {"zero", (PyCFunction)TransportKey_zero, METH_NOARGS,
     "Wipe the key (its bytes and idle contexts now, a running batch's when it ends); later\n"
     "batches raise ValueError."},
    {NULL, NULL, 0, NULL},
};

static PyObject *TransportKey_repr(TransportKey *self)
{
    return PyUnicode_FromString(self->keyed ? "TransportKey(<key>)" : "TransportKey(zeroed)");
}

static PyTypeObject TransportKeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpn.core.wireguard._transport.TransportKey",
    .tp_basicsize = sizeof(TransportKey),
    .tp_dealloc = (destructor)TransportKey_dealloc,
    .tp_repr = (reprfunc)TransportKey_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TransportKey(key): one ChaCha20-Poly1305 transport key; any number of threads may\n"
               "seal and open with it at once.",
    .tp_methods = TransportKey_methods,
    .tp_init = (initproc)TransportKey_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef transport_functions[] = {
    {"accept_run", accept_run, METH_VARARGS, accept_run_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef transport_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpn.core.wireguard._transport",
    .m_doc = "WireGuard transport messages sealed and opened in batches (OpenSSL libcrypto).",
    .m_size = -1,
    .m_methods = transport_functions,
};

PyMODINIT_FUNC PyInit__transport(void)
{
    PyObject *module, *limit;

    if (!chacha20_poly1305) {
        chacha20_poly1305 = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
        if (!chacha20_poly1305) {
            PyErr_SetString(PyExc_ImportError, "the system OpenSSL has no ChaCha20-Poly1305");
            return NULL;
        }
    }
    if (PyType_Ready(&TransportKeyType) < 0)
        return NULL;
    module = PyModule_Create(&transport_module);
    if (!module)
        return NULL;
    limit = PyLong_FromUnsignedLongLong(REJECT_AFTER_MESSAGES);
    if (!limit || PyModule_AddObjectRef(module, "TransportKey", (PyObject *)&TransportKeyType) < 0
        || PyModule_AddIntConstant(module, "REPLAY_SLOTS", REPLAY_SLOTS) < 0
        || PyModule_AddIntConstant(module, "REPLAY_WINDOW", REPLAY_WINDOW) < 0
        || PyModule_AddIntConstant(module, "RECORD_LEN", RECORD_SIZE) < 0
        || PyModule_AddIntConstant(module, "MAX_SOURCES", MAX_SOURCES) < 0
        || PyModule_AddIntConstant(module, "OPENED_LEN", OPENED_SIZE) < 0
        || PyModule_AddObjectRef(module, "REJECT_AFTER_MESSAGES", limit) < 0
        || PyModule_AddStringConstant(module, "OPENSSL_VERSION",
                                      OpenSSL_version(OPENSSL_VERSION)) < 0)
        Py_CLEAR(module);
    Py_XDECREF(limit);
    return module;
}
