/* The native twin of vpn.core.offload.gro.Coalescer: packets that lie in one caller's buffer
 * (named by records of offset, length and slot) coalesced into virtio-net frames for a TUN
 * write.
 *
 * The Python code in gro.py is the reference; this file must give byte-identical frames and
 * the same segment counts, in the same order, for any input. The two are transliterations of
 * each other: add_packet is Coalescer.add, add_tcp/add_udp are _add_tcp/_add_udp, fill_run is
 * _finish, and the flow table is the dict `flows` (get, set, pop, clear) with the same bound:
 * before a new key goes in while MAX_FLOWS keys are held, every flow is forgotten.
 *
 * State: `packets` holds every packet added (offset and length in the buffer, and the next
 * packet of its run), `runs` the runs, and `out` the frames in order, each a run or (with
 * OUT_PASS set) a packet that passes through alone. Nothing is copied until frames(): a
 * frame is built from the buffer as it is then, as the reference builds it from its views.
 *
 * Safety: every header is parsed from a local copy of the packet's first bytes (at most
 * HEAD_MAX, bounded by the packet's length), so each length is checked once and nothing is
 * read outside a packet's record, even if another thread writes to the buffer while the GIL
 * is released. The buffer cannot shrink: the exported view is held for the object's life.
 * Records are read once, with the GIL, and checked against the buffer before any state
 * changes. A coalescer in a call (busy, from claim() on) refuses every other call.
 *
 * The module's pieces, one job each: this file (the type, its calls and the module),
 * gro_add.c (adding packets), gro_flows.c (the flow table), gro_frames.c (building the
 * frames); gro.h holds what they share. */
#include "gro.h"

#include <structmember.h>

#include "wire.h"

/* VirtioNetHeader() packed: what every frame that is not coalesced starts with. */
static PyObject *no_offload;

static void forget(Coalescer *c)
{
    c->npackets = c->nruns = c->nout = 0;
    flows_clear(c);
}

/* ---- the type ---- */

/* The rule for every method that reads or changes the state: claim() first, which marks the
 * coalescer busy at once, and release() on every way out. Nothing may come between the check
 * and the mark: an allocation can run the cyclic GC, hence a __del__ or (when it drops the
 * GIL) another thread, and a call from there would change what this one has already sized
 * (a run grown after frames() sized its body overflows it). */
static int claim(Coalescer *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Coalescer in use by another call");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static void release(Coalescer *self) { self->busy = 0; }

/* Room for `more` further packets, runs and out entries (one each at most per packet). */
static int reserve(Coalescer *c, size_t more)
{
    if (more > MAX_ITEMS - c->npackets) {
        PyErr_SetString(PyExc_ValueError, "too many packets gathered in one Coalescer");
        return -1;
    }
    size_t need = c->npackets + more;
    if (need <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 64;
    while (cap < need)
        cap = cap > MAX_ITEMS / 2 ? MAX_ITEMS : cap * 2;
    struct packet *packets = PyMem_Realloc(c->packets, cap * sizeof(struct packet));
    if (packets)
        c->packets = packets;
    struct run *runs = packets ? PyMem_Realloc(c->runs, cap * sizeof(struct run)) : NULL;
    if (runs)
        c->runs = runs;
    uint32_t *out = runs ? PyMem_Realloc(c->out, cap * sizeof(uint32_t)) : NULL;
    if (!out) {
        PyErr_NoMemory();
        return -1;
    }
    c->out = out;
    c->cap = cap;
    return 0;
}

static PyObject *Coalescer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "udp", "max_size", NULL};
    PyObject *buffer;
    int udp = 0;
    Py_ssize_t max_size = 65535;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$pn:Coalescer", kwlist, &buffer, &udp,
                                     &max_size))
        return NULL;
    if (max_size < 0 || max_size > 65535) {
        PyErr_Format(PyExc_ValueError, "max_size %zd out of range 0..65535", max_size);
        return NULL;
    }
    Coalescer *self = (Coalescer *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->udp = (char)(udp != 0);
    self->max_size = max_size;
    self->gen = 1;
    self->slots = PyMem_Calloc(TABLE_SLOTS, sizeof(struct slot));
    if (!self->slots) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Coalescer_dealloc(Coalescer *self)
{
    /* never busy here: a running call holds a reference */
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    PyMem_Free(self->packets);
    PyMem_Free(self->runs);
    PyMem_Free(self->out);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(add_records_doc,
"add_records(records, start, stop, denied=None) -> int\n\n"
"Add the packets buffer[offset:offset + length] of records start..stop-1, in order, as\n"
"gro.Coalescer.add adds packets. records holds little-endian uint32 triples (offset, length,\n"
"slot), record i at byte 12 * i. A record whose slot has denied[slot] != 0 (slot inside\n"
"denied) is skipped as if never seen; returns how many were. ValueError for a bad range or\n"
"a record outside the buffer, before anything changes. The GIL is released for the loop.");

static PyObject *Coalescer_add_records(Coalescer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"records", "start", "stop", "denied", NULL};
    Py_buffer records, denied = {0};
    Py_ssize_t start, stop;
    PyObject *denied_obj = Py_None, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*nn|O:add_records", kwlist, &records,
                                     &start, &stop, &denied_obj))
        return NULL;
    if (denied_obj != Py_None && PyObject_GetBuffer(denied_obj, &denied, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&records);
        return NULL;
    }
    Py_ssize_t nrecords = records.len / RECORD_SIZE;
    if (claim(self) < 0)
        goto unclaimed;
    if (start < 0 || start > stop || stop > nrecords) {
        PyErr_Format(PyExc_ValueError, "records %zd..%zd outside 0..%zd", start, stop,
                     nrecords);
        goto done;
    }
    if (reserve(self, (size_t)(stop - start)) < 0)
        goto done;
    /* Read and check every record first, into the room past the packets held. */
    const uint8_t *rec = records.buf, *deny = denied.buf;
    size_t first = self->npackets, last = first, buflen = (size_t)self->view.len;
    Py_ssize_t skipped = 0;
    for (Py_ssize_t i = start; i < stop; i++) {
        const uint8_t *r = rec + RECORD_SIZE * i;
        uint32_t offset = load32(r + RECORD_OFFSET_AT), len = load32(r + RECORD_LENGTH_AT);
        uint32_t slot = load32(r + RECORD_SLOT_AT);
        if ((uint64_t)offset + len > buflen) {
            PyErr_Format(PyExc_ValueError, "record %zd (offset %u, length %u) beyond the "
                         "%zu-byte buffer", i, offset, len, buflen);
            goto done;
        }
        if (deny && slot < (size_t)denied.len && deny[slot]) {
            skipped++;
            continue;
        }
        self->packets[last++] = (struct packet){offset, len, NO_PACKET};
    }
    PyThreadState *ts = last - first >= GIL_MIN_PACKETS ? PyEval_SaveThread() : NULL;
    for (size_t i = first; i < last; i++)
        add_packet(self, (uint32_t)i);
    self->npackets = last;
    if (ts)
        PyEval_RestoreThread(ts);
    result = PyLong_FromSsize_t(skipped);
done:
    release(self);
unclaimed:
    if (denied.obj)
        PyBuffer_Release(&denied);
    PyBuffer_Release(&records);
    return result;
}

PyDoc_STRVAR(frames_doc,
"frames() -> list[tuple[bytes, bytes, int]]\n\n"
"(header, body, segments) of every frame gathered, in order, where header + body is what\n"
"gro.Coalescer's Coalesced.frame() would be; the coalescer is then empty again. The GIL is\n"
"released while the bodies are copied.");

static PyObject *Coalescer_frames(Coalescer *self, PyObject *Py_UNUSED(ignored))
{
    if (claim(self) < 0)
        return NULL;
    size_t n = self->nout, bytes = 0;
    PyObject *list = PyList_New((Py_ssize_t)n);
    uint8_t **dst = PyMem_Malloc((n ? n : 1) * sizeof(uint8_t *));
    if (!list || !dst) {
        Py_XDECREF(list);
        PyMem_Free(dst);
        release(self);
        return PyErr_NoMemory();
    }
    /* With the GIL: every object, bodies not yet filled (nothing else can see them). */
    for (size_t i = 0; i < n; i++) {
        uint32_t entry = self->out[i];
        const struct packet *alone;
        size_t size = entry_size(self, entry, &alone);
        PyObject *header = alone ? Py_NewRef(no_offload) : run_header(&self->runs[entry]);
        PyObject *body = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        PyObject *count = PyLong_FromUnsignedLong(alone ? 1 : self->runs[entry].count);
        PyObject *item = header && body && count ? PyTuple_Pack(3, header, body, count) : NULL;
        Py_XDECREF(header);
        Py_XDECREF(count);
        if (!item) {
            Py_XDECREF(body);
            Py_DECREF(list);
            PyMem_Free(dst);
            release(self);
            return NULL;
        }
        dst[i] = (uint8_t *)PyBytes_AS_STRING(body);
        Py_DECREF(body); /* the tuple holds it */
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        bytes += size;
    }
    PyThreadState *ts = bytes >= GIL_MIN_BYTES ? PyEval_SaveThread() : NULL;
    const uint8_t *buf = self->view.buf;
    for (size_t i = 0; i < n; i++) {
        uint32_t entry = self->out[i];
        const struct packet *alone;
        if (entry & OUT_PASS)
            alone = &self->packets[entry & ~OUT_PASS];
        else if (self->runs[entry].count == 1)
            alone = &self->packets[self->runs[entry].first];
        else
            alone = NULL;
        if (alone)
            memcpy(dst[i], buf + alone->offset, alone->len);
        else
            fill_run(self, &self->runs[entry], dst[i]);
    }
    forget(self);
    if (ts)
        PyEval_RestoreThread(ts);
    release(self);
    PyMem_Free(dst);
    return list;
}

static PyObject *Coalescer_clear(Coalescer *self, PyObject *Py_UNUSED(ignored))
{
    if (claim(self) < 0)
        return NULL;
    forget(self);
    release(self);
    Py_RETURN_NONE;
}

static PyMethodDef Coalescer_methods[] = {
    {"add_records", (PyCFunction)(void (*)(void))Coalescer_add_records,
     METH_VARARGS | METH_KEYWORDS, add_records_doc},
    {"frames", (PyCFunction)Coalescer_frames, METH_NOARGS, frames_doc},
    {"clear", (PyCFunction)Coalescer_clear, METH_NOARGS, "Forget everything gathered."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Coalescer_members[] = {
    {"udp", T_BOOL, offsetof(Coalescer, udp), READONLY, "UDP runs are kept too."},
    {"max_size", T_PYSSIZET, offsetof(Coalescer, max_size), READONLY,
     "The largest IP length of a coalesced frame."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CoalescerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpn.core.offload._gro.Coalescer",
    .tp_basicsize = sizeof(Coalescer),
    .tp_dealloc = (destructor)Coalescer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Coalescer(buffer, *, udp=False, max_size=65535): GRO over packets laid out in "
              "buffer (held, read only, for the object's life), as gro.Coalescer.",
    .tp_methods = Coalescer_methods,
    .tp_members = Coalescer_members,
    .tp_new = Coalescer_new,
};

static struct PyModuleDef gro_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpn.core.offload._gro",
    .m_doc = "Native GRO coalescing, the twin of vpn.core.offload.gro.Coalescer.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__gro(void)
{
    PyObject *os = PyImport_ImportModule("os");
    PyObject *seed = os ? PyObject_CallMethod(os, "urandom", "i", 8) : NULL;
    Py_XDECREF(os);
    if (!seed)
        return NULL;
    if (!PyBytes_Check(seed) || PyBytes_GET_SIZE(seed) != 8) {
        Py_DECREF(seed);
        PyErr_SetString(PyExc_ImportError, "os.urandom(8) gave no 8 bytes");
        return NULL;
    }
    memcpy(&hash_seed, PyBytes_AS_STRING(seed), 8);
    Py_DECREF(seed);
    if (!no_offload) {
        no_offload = PyBytes_FromStringAndSize(NULL, VIRTIO_NET_HDR_LEN);
        if (!no_offload)
            return NULL;
        memset(PyBytes_AS_STRING(no_offload), 0, VIRTIO_NET_HDR_LEN);
    }
    if (PyType_Ready(&CoalescerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&gro_module);
    if (!module)
        return NULL;
    if (PyModule_AddObjectRef(module, "Coalescer", (PyObject *)&CoalescerType) < 0
        || PyModule_AddIntConstant(module, "MAX_FLOWS", MAX_FLOWS) < 0
        || PyModule_AddIntConstant(module, "MAX_UDP_SEGMENTS", MAX_UDP_SEGMENTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
