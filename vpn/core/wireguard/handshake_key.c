/* X25519Key: a private key made into OpenSSL's EVP_PKEY once, its public half computed
 * once, so that no exchange builds a key or multiplies for the public half again. Exchanges
 * run with the GIL released (`cryptography`'s X25519 holds it: handshakes on two threads
 * ran at 0.88x one), each holding its own reference to the key, so that wipe() meanwhile
 * frees it only after them.
 */
#include "handshake.h"

#include <string.h>

#include <openssl/crypto.h>

/* ----- X25519Key: a private key's EVP_PKEY, made once ---------------------------------- */

PyObject *KeyWiped;

static PyObject *X25519Key_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"private", NULL};
    Py_buffer in;
    uint8_t private[KEY_LEN], public[KEY_LEN];
    EVP_PKEY *key;
    X25519Key *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:X25519Key", kwlist, &in))
        return NULL;
    if (exact(&in, KEY_LEN, "a private key") < 0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    memcpy(private, in.buf, KEY_LEN);
    PyBuffer_Release(&in);
    Py_BEGIN_ALLOW_THREADS
    key = x25519_private_key(private, public);
    OPENSSL_cleanse(private, KEY_LEN);
    Py_END_ALLOW_THREADS
    if (!key)
        return openssl_failed("X25519");
    self = (X25519Key *)type->tp_alloc(type, 0);
    if (self)
        self->public = PyBytes_FromStringAndSize((const char *)public, KEY_LEN);
    if (!self || !self->public) {
        EVP_PKEY_free(key);
        Py_XDECREF(self);
        return NULL;
    }
    self->key = key;
    return (PyObject *)self;
}

static void X25519Key_dealloc(X25519Key *self)
{
    EVP_PKEY_free(self->key); /* OpenSSL cleanses the private key as it frees it */
    Py_XDECREF(self->public);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

EVP_PKEY *x25519_key_hold(X25519Key *self)
{
    EVP_PKEY *key = self->key;

    if (!key) {
        PyErr_SetString(KeyWiped, "the private key was wiped");
        return NULL;
    }
    if (EVP_PKEY_up_ref(key) != 1)
        return (EVP_PKEY *)openssl_failed("X25519");
    return key;
}

PyDoc_STRVAR(exchange_doc,
"exchange(peer, /) -> bytes | None\n\n"
"X25519 with a peer's 32-byte public key: the shared secret, or None when it is all zero\n"
"(a low-order point). KeyWiped once the key was wiped.");

static PyObject *X25519Key_exchange(X25519Key *self, PyObject *arg)
{
    Py_buffer in;
    uint8_t peer[KEY_LEN], shared[KEY_LEN];
    EVP_PKEY *key;
    PyObject *result;
    int derived;

    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    if (exact(&in, KEY_LEN, "the peer's public key") < 0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    memcpy(peer, in.buf, KEY_LEN);
    PyBuffer_Release(&in);
    if (!(key = x25519_key_hold(self)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    derived = x25519_derive(key, peer, shared);
    EVP_PKEY_free(key);
    Py_END_ALLOW_THREADS
    if (derived == FAILED)
        result = openssl_failed("X25519");
    else if (derived == LOW_ORDER)
        result = Py_NewRef(Py_None);
    else
        result = PyBytes_FromStringAndSize((const char *)shared, KEY_LEN);
    OPENSSL_cleanse(shared, KEY_LEN);
    return result;
}

PyDoc_STRVAR(wipe_doc, "wipe() -> None\n\n"
"Free the private key (OpenSSL cleanses it) once no exchange uses it; exchanges after\n"
"this raise KeyWiped. Idempotent.");

static PyObject *X25519Key_wipe(X25519Key *self, PyObject *Py_UNUSED(ignored))
{
    EVP_PKEY *key = self->key;

    self->key = NULL;
    EVP_PKEY_free(key);
    Py_RETURN_NONE;
}

static PyObject *X25519Key_public(X25519Key *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->public);
}

static PyMethodDef X25519Key_methods[] = {
    {"exchange", (PyCFunction)X25519Key_exchange, METH_O, exchange_doc},
    {"wipe", (PyCFunction)X25519Key_wipe, METH_NOARGS, wipe_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef X25519Key_getset[] = {
    {"public", (getter)X25519Key_public, NULL, "the 32-byte public key", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject X25519KeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpn.core.wireguard._handshake.X25519Key",
    .tp_basicsize = sizeof(X25519Key),
    .tp_dealloc = (destructor)X25519Key_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "X25519Key(private): a 32-byte X25519 private key made into OpenSSL's key once,\n"
              "its public half computed once; exchange() with peers' public keys, the GIL\n"
              "released.",
    .tp_methods = X25519Key_methods,
    .tp_getset = X25519Key_getset,
    .tp_new = X25519Key_new,
};
