/* PeerTable: the device's peers as the responder's step needs them, looked up in C by the
 * static key it opens, so that the whole step runs with the GIL released once (a lookup in
 * Python between the halves handed it back, and taking it back waited for the loop's
 * thread: a third of the workers' time under a flood). Each entry is a peer's static public key, its precomputed static-static
 * secret (or none: a low-order key, or no private key), its preshared key and the slot
 * Python maps back to its Peer.
 *
 * Immutable once built, so threads read it without a lock; Python builds a new one when
 * the peer set, a psk or the private key changes. A step holds its own reference while the
 * GIL is released, so the table outlives every step in flight; its secrets are wiped with
 * OPENSSL_cleanse when it is freed.
 */
#include "handshake.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

static int by_public(const void *a, const void *b)
{
    return memcmp(((const struct known_peer *)a)->public,
                  ((const struct known_peer *)b)->public, KEY_LEN);
}

const struct known_peer *peer_table_find(const PeerTable *table,
                                         const uint8_t public[KEY_LEN])
{
    struct known_peer key;

    memcpy(key.public, public, KEY_LEN);
    return bsearch(&key, table->peers, (size_t)table->count, sizeof *table->peers, by_public);
}

/* One (public, ss or None, psk) entry copied into `peer`; whether it was. */
static int take_entry(PyObject *entry, struct known_peer *peer, Py_ssize_t slot)
{
    Py_buffer public, ss = {0}, psk;
    int ok;

    if (!PyTuple_Check(entry)) {
        PyErr_SetString(PyExc_TypeError, "a PeerTable entry is a (public, ss, psk) tuple");
        return 0;
    }
    if (!PyArg_ParseTuple(entry, "y*z*y*:a PeerTable entry", &public, &ss, &psk))
        return 0;
    ok = exact(&public, KEY_LEN, "a public key") == 0 && exact(&psk, KEY_LEN, "a psk") == 0
         && (ss.buf == NULL || exact(&ss, KEY_LEN, "an ss") == 0);
    if (ok) {
        memcpy(peer->public, public.buf, KEY_LEN);
        memcpy(peer->psk, psk.buf, KEY_LEN);
        peer->has_ss = ss.buf != NULL;
        if (peer->has_ss)
            memcpy(peer->ss, ss.buf, KEY_LEN);
        else
            memset(peer->ss, 0, KEY_LEN);
        peer->slot = slot;
    }
    PyBuffer_Release(&public);
    if (ss.buf)
        PyBuffer_Release(&ss);
    PyBuffer_Release(&psk);
    return ok;
}

static void free_peers(struct known_peer *peers, Py_ssize_t count)
{
    if (peers)
        OPENSSL_cleanse(peers, (size_t)count * sizeof *peers);
    PyMem_Free(peers);
}

static PyObject *PeerTable_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", NULL};
    PyObject *entries, *fast;
    struct known_peer *peers;
    Py_ssize_t count;
    PeerTable *self;
    int ok = 1;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:PeerTable", kwlist, &entries))
        return NULL;
    if (!(fast = PySequence_Fast(entries, "PeerTable takes a sequence of entries")))
        return NULL;
    count = PySequence_Fast_GET_SIZE(fast);
    peers = PyMem_Calloc(count ? (size_t)count : 1, sizeof *peers);
    if (!peers) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; ok && i < count; i++)
        ok = take_entry(PySequence_Fast_GET_ITEM(fast, i), &peers[i], i);
    Py_DECREF(fast);
    if (ok) {
        qsort(peers, (size_t)count, sizeof *peers, by_public);
        for (Py_ssize_t i = 1; ok && i < count; i++)
            if (by_public(&peers[i - 1], &peers[i]) == 0) {
                PyErr_SetString(PyExc_ValueError, "a public key is in the table twice");
                ok = 0;
            }
    }
    self = ok ? (PeerTable *)type->tp_alloc(type, 0) : NULL;
    if (!self) {
        free_peers(peers, count);
        return NULL;
    }
    self->peers = peers;
    self->count = count;
    return (PyObject *)self;
}

static void PeerTable_dealloc(PeerTable *self)
{
    free_peers(self->peers, self->count);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t PeerTable_len(PeerTable *self)
{
    return self->count;
}

static PySequenceMethods PeerTable_as_sequence = {
    .sq_length = (lenfunc)PeerTable_len,
};

PyTypeObject PeerTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpn.core.wireguard._handshake.PeerTable",
    .tp_basicsize = sizeof(PeerTable),
    .tp_dealloc = (destructor)PeerTable_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PeerTable(entries): the peers for respond_known, each entry (public key, ss\n"
              "or None, psk), its slot its position; immutable, secrets wiped when freed.",
    .tp_as_sequence = &PeerTable_as_sequence,
    .tp_new = PeerTable_new,
};
