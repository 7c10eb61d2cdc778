/* The handshake module for vpn/core/wireguard/crypto.py and noise.py, over the system
 * OpenSSL's EVP interface: X25519Key (handshake_key.c), one-shot ChaCha20-Poly1305 and
 * XChaCha20-Poly1305 seal/open with associated data, HChaCha20 and WireGuard's KDF (here, over
 * handshake_crypto.c's OpenSSL calls), and the Noise steps with Diffie-Hellmans, each in one
 * call (handshake_steps.c: the responder's whole step, the initiator's consume of a response;
 * handshake_table.c: the peers that step looks up without the GIL).
 * The reference is crypto_reference.py (`cryptography` and hashlib's hmac) and noise.py's
 * Python path, which tests prove this equal to.
 *
 * Why: `cryptography`'s X25519 holds the GIL; here X25519 runs with the GIL released, and so
 * does every call over a long input (RELEASE_MIN). It also spares the idle endpoint
 * importing `cryptography` (about 8 MB). Every key is copied into a local array before the
 * GIL goes (another thread may write a bytearray it came from) and wiped with
 * OPENSSL_cleanse afterwards, as is every derived secret.
 */
#include "handshake.h"

#include <string.h>

#include <openssl/crypto.h>

/* ----- the Python functions ------------------------------------------------------------ */

int exact(const Py_buffer *b, Py_ssize_t len, const char *what)
{
    if (b->len == len)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s is %zd bytes, not %zd", what, len, b->len);
    return -1;
}

static int bounded(const Py_buffer *b, const char *what)
{
    if (b->len <= MAX_TEXT)
        return 0;
    PyErr_Format(PyExc_OverflowError, "%s is longer than %d bytes", what, MAX_TEXT);
    return -1;
}

PyObject *openssl_failed(const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "OpenSSL failed in %s", what);
    return NULL;
}

/* seal/open and their X variants: (key, nonce, text, ad), the nonce 12 or 24 bytes. */
static PyObject *aead(PyObject *args, const char *format, int sealing, Py_ssize_t nonce_len)
{
    Py_buffer key, nonce, text, ad;
    uint8_t k[KEY_LEN], xn[XNONCE_LEN], n[NONCE_LEN];
    PyObject *out = NULL;
    Py_ssize_t len = 0;
    int result = FAILED;

    if (!PyArg_ParseTuple(args, format, &key, &nonce, &text, &ad))
        return NULL;
    if (exact(&key, KEY_LEN, "a key") < 0 || exact(&nonce, nonce_len, "the nonce") < 0
        || bounded(&text, sealing ? "the plaintext" : "the ciphertext") < 0
        || bounded(&ad, "the associated data") < 0)
        goto release;
    if (!sealing && text.len < TAG_LEN) {
        out = Py_NewRef(Py_None); /* too short to hold a tag: it cannot authenticate */
        goto release;
    }
    len = sealing ? text.len : text.len - TAG_LEN;
    out = PyBytes_FromStringAndSize(NULL, sealing ? len + TAG_LEN : len);
    if (!out)
        goto release;
    memcpy(k, key.buf, KEY_LEN);
    memcpy(xn, nonce.buf, (size_t)nonce_len);
    memcpy(n, xn, NONCE_LEN);
    BEGIN_ALLOW_THREADS_IF(text.len + ad.len >= RELEASE_MIN)
    if (nonce_len == XNONCE_LEN && !extend(k, xn, k, n))
        result = FAILED;
    else if (sealing)
        result = seal(k, n, text.buf, (int)len, ad.buf, (int)ad.len,
                      (uint8_t *)PyBytes_AS_STRING(out)) ? OPENED : FAILED;
    else
        result = open_(k, n, text.buf, (int)len, ad.buf, (int)ad.len,
                       (uint8_t *)PyBytes_AS_STRING(out));
    OPENSSL_cleanse(k, KEY_LEN);
    END_ALLOW_THREADS_IF
    if (result != OPENED) {
        OPENSSL_cleanse(PyBytes_AS_STRING(out), (size_t)len); /* unauthenticated plaintext */
        Py_SETREF(out, result == BAD_TAG ? Py_NewRef(Py_None) : openssl_failed("the AEAD"));
    }
release:
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&text);
    PyBuffer_Release(&ad);
    return out;
}

PyDoc_STRVAR(seal_doc, "seal(key, nonce, plaintext, ad, /) -> bytes\n\n"
"ChaCha20-Poly1305 (a 12-byte nonce): the ciphertext and its 16-byte tag.");
PyDoc_STRVAR(open_doc, "open(key, nonce, ciphertext, ad, /) -> bytes | None\n\n"
"ChaCha20-Poly1305 (a 12-byte nonce): the plaintext, or None when it does not authenticate.");
PyDoc_STRVAR(xseal_doc, "xseal(key, nonce, plaintext, ad, /) -> bytes\n\n"
"XChaCha20-Poly1305 (a 24-byte nonce): the ciphertext and its 16-byte tag.");
PyDoc_STRVAR(xopen_doc, "xopen(key, nonce, ciphertext, ad, /) -> bytes | None\n\n"
"XChaCha20-Poly1305 (a 24-byte nonce): the plaintext, or None when it does not authenticate.");

static PyObject *py_seal(PyObject *Py_UNUSED(m), PyObject *args)
{
    return aead(args, "y*y*y*y*:seal", 1, NONCE_LEN);
}

static PyObject *py_open(PyObject *Py_UNUSED(m), PyObject *args)
{
    return aead(args, "y*y*y*y*:open", 0, NONCE_LEN);
}

static PyObject *py_xseal(PyObject *Py_UNUSED(m), PyObject *args)
{
    return aead(args, "y*y*y*y*:xseal", 1, XNONCE_LEN);
}

static PyObject *py_xopen(PyObject *Py_UNUSED(m), PyObject *args)
{
    return aead(args, "y*y*y*y*:xopen", 0, XNONCE_LEN);
}

PyDoc_STRVAR(hchacha20_doc, "hchacha20(key, nonce, /) -> bytes\n\n"
"HChaCha20 of a 32-byte key and a 16-byte nonce: a 32-byte subkey.");

static PyObject *py_hchacha20(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_buffer key, nonce;
    uint8_t k[KEY_LEN], n[HNONCE_LEN], out[KEY_LEN];
    PyObject *result;
    int ok;

    if (!PyArg_ParseTuple(args, "y*y*:hchacha20", &key, &nonce))
        return NULL;
    ok = exact(&key, KEY_LEN, "a key") == 0 && exact(&nonce, HNONCE_LEN, "the nonce") == 0;
    if (ok) {
        memcpy(k, key.buf, KEY_LEN);
        memcpy(n, nonce.buf, HNONCE_LEN);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    if (!ok)
        return NULL;
    ok = hchacha20(k, n, out); /* about 1 us: keeps the GIL (RELEASE_MIN) */
    OPENSSL_cleanse(k, KEY_LEN);
    result = ok ? PyBytes_FromStringAndSize((const char *)out, KEY_LEN)
                : openssl_failed("HChaCha20");
    OPENSSL_cleanse(out, KEY_LEN);
    return result;
}

PyDoc_STRVAR(kdf_doc, "kdf(key, data, outputs, /) -> tuple[bytes, ...]\n\n"
"WireGuard's KDF (HMAC-BLAKE2s): its first `outputs` (1 to 3) 32-byte keys.");

static PyObject *py_kdf(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_buffer key, data;
    uint8_t out[KDF_MAX][HASH_LEN], *copy;
    size_t keylen, datalen;
    PyObject *result = NULL;
    int outputs, ok;

    if (!PyArg_ParseTuple(args, "y*y*i:kdf", &key, &data, &outputs))
        return NULL;
    if (outputs < 1 || outputs > KDF_MAX) {
        PyErr_Format(PyExc_ValueError, "the KDF gives 1 to %d outputs, not %d", KDF_MAX,
                     outputs);
        goto release;
    }
    /* Both are copied (either may be a secret another thread can write meanwhile); one
     * more byte, so that empty inputs still get a pointer. */
    keylen = (size_t)key.len;
    datalen = (size_t)data.len;
    copy = PyMem_RawMalloc(keylen + datalen + 1);
    if (!copy) {
        PyErr_NoMemory();
        goto release;
    }
    memcpy(copy, key.buf, keylen);
    memcpy(copy + keylen, data.buf, datalen);
    BEGIN_ALLOW_THREADS_IF(keylen + datalen >= RELEASE_MIN)
    ok = kdf(copy, keylen, copy + keylen, datalen, outputs, out);
    OPENSSL_cleanse(copy, keylen + datalen);
    END_ALLOW_THREADS_IF
    PyMem_RawFree(copy);
    if (!ok) {
        result = openssl_failed("HMAC-BLAKE2s");
        goto release;
    }
    result = PyTuple_New(outputs);
    for (int i = 0; result && i < outputs; i++) {
        PyObject *item = PyBytes_FromStringAndSize((const char *)out[i], HASH_LEN);

        if (!item)
            Py_CLEAR(result);
        else
            PyTuple_SET_ITEM(result, i, item);
    }
    OPENSSL_cleanse(out, sizeof out);
release:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef handshake_methods[] = {
    {"seal", py_seal, METH_VARARGS, seal_doc},
    {"open", py_open, METH_VARARGS, open_doc},
    {"xseal", py_xseal, METH_VARARGS, xseal_doc},
    {"xopen", py_xopen, METH_VARARGS, xopen_doc},
    {"hchacha20", py_hchacha20, METH_VARARGS, hchacha20_doc},
    {"kdf", py_kdf, METH_VARARGS, kdf_doc},
    {"respond_known", py_respond_known, METH_VARARGS, respond_known_doc},
    {"consume_response", py_consume_response, METH_VARARGS, consume_response_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef handshake_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpn.core.wireguard._handshake",
    .m_doc = "The handshake's X25519, AEADs and KDF over OpenSSL libcrypto, the GIL released.",
    .m_size = -1,
    .m_methods = handshake_methods,
};

PyMODINIT_FUNC PyInit__handshake(void)
{
    if (!handshake_crypto_init()) {
        PyErr_SetString(PyExc_ImportError, "the system OpenSSL has no ChaCha20(-Poly1305), "
                                           "BLAKE2S-256 or HMAC-BLAKE2S-256");
        return NULL;
    }
    if (PyType_Ready(&X25519KeyType) < 0 || PyType_Ready(&PeerTableType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&handshake_module);
    if (!module)
        return NULL;
    if (!KeyWiped)
        KeyWiped = PyErr_NewException("vpn.core.wireguard._handshake.KeyWiped", NULL, NULL);
    if (!KeyWiped || PyModule_AddObjectRef(module, "KeyWiped", KeyWiped) < 0
        || PyModule_AddObjectRef(module, "X25519Key", (PyObject *)&X25519KeyType) < 0
        || PyModule_AddObjectRef(module, "PeerTable", (PyObject *)&PeerTableType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
