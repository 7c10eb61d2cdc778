/* The WireGuard receive screen, native: the verdict on each datagram a receive got, before
 * any Python runs. vpn/io/_udp.c applies it to what recvmmsg returns without knowing the
 * protocol: a Screen object hands it a DatagramScreen (vpn/core/include/screen.h) in a
 * capsule.
 *
 * The reference is the Python path: DataPath._receive's dispatch hands every datagram that
 * is not a transport message to Device.handle_handshake_message (whose message_type, in
 * vpn/core/wireguard/messages.py, rejects by length, type and reserved bytes) and looks every
 * transport message's receiver index up. The screen applies exactly those rules (mac1
 * included, keyed BLAKE2s from the system's OpenSSL libcrypto), so a garbage datagram costs
 * nanoseconds here instead of microseconds there, and is counted under the reason the
 * Python path would have given it (screen.SCREEN_REASONS, wire.h's screen_drop). What passes
 * (transport messages for an index we have a keypair for, handshake messages of the right
 * length) goes on to the same Python code as before. Under a flood of about 100,000
 * datagrams a second most of it never reaches Python; see docs/architecture.md.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "bytes.h"
#include "counts.h"
#include "screen.h"
#include "wire.h"

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

typedef struct {
    PyObject_HEAD
    DatagramScreen api;  /* what the capsule hands out */
    uint8_t *known;      /* a copy of the sorted uint32 receiver indexes */
    Py_ssize_t nknown;
    Mac1 mac1;
} Screen;

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
static int screen_one(const DatagramScreen *screen, const uint8_t *p, Py_ssize_t n)
{
    const Screen *s = (const Screen *)((const char *)screen - offsetof(Screen, api));
    const uint8_t *known = s->known;
    Py_ssize_t nknown = s->nknown;
    const Mac1 *mac1 = &s->mac1;
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

static void Screen_dealloc(Screen *self)
{
    PyMem_Free(self->known);
    mac1_close(&self->mac1);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Screen_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"known", "mac1_key", NULL};
    PyObject *known_obj;
    Py_buffer known, key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oy*:Screen", kwlist, &known_obj, &key))
        return NULL;
    if (get_known(known_obj, &known) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    Screen *self = (Screen *)type->tp_alloc(type, 0);
    if (self) {
        self->api = (DatagramScreen){screen_one, SCREEN_REASONS, SCREEN_UNKNOWN_RECEIVER_INDEX};
        self->nknown = known.len / 4;
        self->known = PyMem_Malloc(known.len ? (size_t)known.len : 1);
        if (!self->known) {
            PyErr_NoMemory();
            Py_CLEAR(self);
        } else {
            memcpy(self->known, known.buf, (size_t)known.len);
            if (mac1_open(&self->mac1, &key) < 0)
                Py_CLEAR(self);
        }
    }
    PyBuffer_Release(&known);
    PyBuffer_Release(&key);
    return (PyObject *)self;
}

static void capsule_release(PyObject *capsule)
{
    Py_XDECREF((PyObject *)PyCapsule_GetContext(capsule));
}

/* A capsule of the DatagramScreen that keeps the Screen alive while it is held. */
static PyObject *Screen_capsule(Screen *self, void *Py_UNUSED(closure))
{
    PyObject *capsule = PyCapsule_New(&self->api, SCREEN_CAPSULE, capsule_release);
    if (capsule && PyCapsule_SetContext(capsule, Py_NewRef(self)) < 0) {
        Py_DECREF(self);
        Py_CLEAR(capsule);
    }
    return capsule;
}

PyDoc_STRVAR(screen_doc,
"screen(data, segment_size) -> (runs, counts, lost)\n\n"
"The screen applied to one receive (datagrams of segment_size bytes, the last possibly\n"
"shorter; 0 or more than len(data): one datagram), as vpn/io/_udp.c's receive applies it:\n"
"runs lists (start, length) of each stretch of datagrams that pass, counts is None or the\n"
"drops by screen.SCREEN_REASONS, lost says whether an unknown receiver index was seen.");

static PyObject *Screen_screen(Screen *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t segment, counts[SCREEN_REASONS] = {0}, nruns;
    PyObject *list = NULL, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*n:screen", &data, &segment))
        return NULL;
    /* At most one run per two datagrams, plus one; a datagram is at least one byte here. */
    ScreenRun *runs = PyMem_Malloc(sizeof(ScreenRun) * (size_t)(data.len / 2 + 2));
    if (!runs) {
        PyErr_NoMemory();
        goto done;
    }
    int lost = screen_receive(&self->api, data.buf, data.len, segment, counts, runs, &nruns);
    list = PyList_New(nruns);
    for (Py_ssize_t i = 0; list && i < nruns; i++) {
        PyObject *run = Py_BuildValue("(nn)", runs[i].start, runs[i].length);
        if (!run)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, run);
    }
    PyObject *count_obj = list ? drop_counts(counts, SCREEN_REASONS) : NULL;
    if (count_obj)
        result = Py_BuildValue("NNO", list, count_obj, lost ? Py_True : Py_False);
    else
        Py_XDECREF(list);
done:
    PyMem_Free(runs);
    PyBuffer_Release(&data);
    return result;
}

/* receive_jobs.run_stop's twin (the Python there is the reference; tests prove them equal):
 * where the run of transport messages from data[pos:] for the first one's header (type,
 * reserved bytes, receiver index) ends, message by message. The loop thread cuts every receive
 * with it before the workers open the runs: one call instead of a column copy per header
 * word. */
PyDoc_STRVAR(run_stop_doc,
"run_stop(data, segment_size, pos, /) -> int: the end of the run of messages from data[pos:]\n"
"(segment_size each, the last possibly shorter) that are at least TRANSPORT_MIN_SIZE bytes and\n"
"begin with the first one's 8 header bytes; len(data) when data[pos:] is one message.");

/* The end of the run from p[pos] (pos < size, segment >= 1): run_stop's loop. */
static Py_ssize_t stop_of(const uint8_t *p, Py_ssize_t size, Py_ssize_t segment,
                          Py_ssize_t pos)
{
    if (size - pos <= segment) /* one message */
        return size;
    Py_ssize_t end = pos + segment;
    while (end < size) {
        Py_ssize_t stop = size - end < segment ? size : end + segment;
        /* A message of TRANSPORT_MIN_SIZE means segment >= 8: the first's header is whole. */
        if (stop - end < TRANSPORT_MIN_SIZE || memcmp(p + end, p + pos, 8) != 0)
            break;
        end = stop;
    }
    return end;
}

static PyObject *run_stop(PyObject *Py_UNUSED(module), PyObject *const *args,
                          Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run_stop takes data, segment_size and pos");
        return NULL;
    }
    Py_ssize_t segment = PyLong_AsSsize_t(args[1]);
    Py_ssize_t pos = segment == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[2]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t end = -1;
    if (segment < 1 || pos < 0 || pos >= data.len)
        PyErr_SetString(PyExc_ValueError, "run_stop: segment_size < 1 or pos outside data");
    else
        end = stop_of(data.buf, data.len, segment, pos);
    PyBuffer_Release(&data);
    return end < 0 ? NULL : PyLong_FromSsize_t(end);
}

/* receive_jobs.whole_runs' twin (the Python there is the reference; tests prove them equal):
 * the dispatch's cut of a busy peer's receives, one call for a wakeup's instead of a Python
 * iteration and a run_stop call each on the loop thread. Holds the GIL throughout; comparing
 * a source may run Python, so the batch's length is read again and each item held while
 * used, and a part's numbers come from its own buffer's length. */
PyDoc_STRVAR(whole_runs_doc,
"whole_runs(batch, start, header, source, offset, parts, /) -> (stop, offset, datagrams):\n"
"from batch[start:], each receive (data, segment_size, source) that comes from `source`, is\n"
"at least TRANSPORT_MIN_SIZE bytes, begins with the 8 bytes `header` and is one run\n"
"(run_stop(data, segment_size or len(data), 0) == len(data)) is appended to the list `parts`\n"
"as (data, segment_size, 0, len(data), offset), offset growing by len(data); it stops at the\n"
"first other. Returns where it stopped, the offset, and the datagrams appended.");

static PyObject *whole_runs(PyObject *Py_UNUSED(module), PyObject *const *args,
                            Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "whole_runs takes batch, start, header, source, offset and parts");
        return NULL;
    }
    PyObject *source = args[3], *parts = args[5];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t offset = start == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[4]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (start < 0 || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "whole_runs: start or offset < 0");
        return NULL;
    }
    if (!PyList_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "whole_runs: parts must be a list");
        return NULL;
    }
    Py_buffer header;
    if (PyObject_GetBuffer(args[2], &header, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t head[8];
    int bad_header = header.len != 8;
    if (!bad_header)
        memcpy(head, header.buf, 8);
    PyBuffer_Release(&header);
    if (bad_header) {
        PyErr_SetString(PyExc_ValueError, "whole_runs: header must be 8 bytes");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "whole_runs: batch must be a sequence");
    if (!seq)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t i = start, datagrams = 0;
    for (; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_Format(PyExc_TypeError, "whole_runs: receive %zd is not a 3-tuple", i);
            Py_DECREF(item);
            goto done;
        }
        PyObject *data = PyTuple_GET_ITEM(item, 0), *src = PyTuple_GET_ITEM(item, 2);
        /* As the reference's `src is not source and src != source`. */
        int other = src == source ? 0 : PyObject_RichCompareBool(src, source, Py_NE);
        Py_ssize_t segment = other == 0 ? PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1)) : 0;
        Py_buffer view;
        if (other < 0 || (segment == -1 && PyErr_Occurred())
            || (!other && PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)) {
            Py_DECREF(item);
            goto done;
        }
        if (other) {
            Py_DECREF(item);
            break;
        }
        Py_ssize_t size = view.len;
        int whole = size >= TRANSPORT_MIN_SIZE && memcmp(view.buf, head, 8) == 0;
        if (whole) {
            if (segment < 1 || segment >= size)
                segment = size; /* one datagram */
            whole = stop_of(view.buf, size, segment, 0) == size;
        }
        PyBuffer_Release(&view);
        if (!whole) {
            Py_DECREF(item);
            break;
        }
        if (offset > PY_SSIZE_T_MAX - size) {
            PyErr_SetString(PyExc_OverflowError, "whole_runs: offset overflows");
            Py_DECREF(item);
            goto done;
        }
        PyObject *part = Py_BuildValue("(Onnnn)", data, segment, (Py_ssize_t)0, size, offset);
        int failed = !part || PyList_Append(parts, part) < 0;
        Py_XDECREF(part);
        Py_DECREF(item);
        if (failed)
            goto done;
        offset += size;
        datagrams += size / segment + (size % segment != 0);
    }
    result = Py_BuildValue("nnn", i, offset, datagrams);
done:
    Py_DECREF(seq);
    return result;
}

static PyMethodDef module_methods[] = {
    {"run_stop", (PyCFunction)(void (*)(void))run_stop, METH_FASTCALL, run_stop_doc},
    {"whole_runs", (PyCFunction)(void (*)(void))whole_runs, METH_FASTCALL, whole_runs_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Screen_methods[] = {
    {"screen", (PyCFunction)Screen_screen, METH_VARARGS, screen_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Screen_getset[] = {
    {"capsule", (getter)Screen_capsule, NULL,
     "The screen for vpn/io/_udp.c's receive (a DatagramScreen, vpn/core/include/screen.h).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ScreenType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpn.core.wireguard._screen.Screen",
    .tp_basicsize = sizeof(Screen),
    .tp_dealloc = (destructor)Screen_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Screen(known, mac1_key): the receive screen for the sorted uint32 array of\n"
              "receiver indexes with a keypair (Device.keypair_indexes) and the device's mac1\n"
              "key (HASH(\"mac1----\" || public key)), or b\"\" to leave mac1 to the Python path.",
    .tp_methods = Screen_methods,
    .tp_getset = Screen_getset,
    .tp_new = Screen_new,
};

static struct PyModuleDef screen_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpn.core.wireguard._screen",
    .m_doc = "The WireGuard receive screen, native (for vpn/io/_udp.c's receive).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__screen(void)
{
    if (!blake2s_mac) {
        blake2s_mac = EVP_MAC_fetch(NULL, "BLAKE2SMAC", NULL);
        if (!blake2s_mac) {
            PyErr_SetString(PyExc_ImportError, "the system OpenSSL has no BLAKE2SMAC");
            return NULL;
        }
    }
    if (PyType_Ready(&ScreenType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&screen_module);
    if (module && PyModule_AddObjectRef(module, "Screen", (PyObject *)&ScreenType) < 0)
        Py_CLEAR(module);
    return module;
}
