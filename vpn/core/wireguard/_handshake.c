/* The handshake's primitives for vpn/core/wireguard/crypto.py, over the system OpenSSL's
 * EVP interface: X25519, ChaCha20-Poly1305 one-shot seal/open with associated data,
 * XChaCha20-Poly1305 (the cookie reply) from EVP_chacha20, and WireGuard's KDF (HMAC over
 * BLAKE2s-256, EVP_MAC). The reference is crypto_reference.py (`cryptography` and hashlib's
 * hmac; crypto.py's Python path), which tests prove this equal to.
 *
 * Why: `cryptography`'s X25519 holds the GIL, so handshakes on two threads ran at 0.88x
 * one; here X25519 runs with the GIL released, and so does every call over a long input
 * (RELEASE_MIN). A private key is made into OpenSSL's key once (X25519Key), not once per
 * exchange. It also spares the idle endpoint importing `cryptography` (about 8 MB).
 *
 * No curve or cipher arithmetic here: OpenSSL does all of it. HChaCha20 is one ChaCha20
 * block less its input words (DESIGN.md), the same derivation as crypto.py's reference.
 * Every key is copied into a local array before the GIL goes (another thread may write a
 * bytearray it came from) and wiped with OPENSSL_cleanse afterwards, as is every derived
 * secret; OpenSSL cleanses its own copies when its objects are freed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "bytes.h"
#include "wire.h" /* KEY_LEN, HASH_LEN (BLAKE2s-256), AEAD_TAG_LEN */

#define TAG_LEN AEAD_TAG_LEN
#define NONCE_LEN 12
#define HNONCE_LEN 16
#define XNONCE_LEN 24
#define CHACHA_BLOCK 64
#define MAX_TEXT (INT_MAX - TAG_LEN) /* OpenSSL's update calls take an int length */

#define KDF_MAX 3

/* Calls over fewer bytes than this keep the GIL. Handshake-sized ones take 1-4 us, and
 * letting go costs more: taking the GIL back waits until the holder lets go, up to the
 * switch interval (5 ms) while the event loop's thread runs Python. A handshake worker
 * that let go in its eight KDFs and three AEADs, as well as in its four X25519s, spent
 * that wait up to fifteen times a message. */
#define RELEASE_MIN 4096

/* Py_BEGIN/END_ALLOW_THREADS, only when `release`. */
#define BEGIN_ALLOW_THREADS_IF(release)                                                  \
    {                                                                                    \
        PyThreadState *_save = (release) ? PyEval_SaveThread() : NULL;
#define END_ALLOW_THREADS_IF                                                             \
    if (_save)                                                                           \
        PyEval_RestoreThread(_save);                                                     \
    }

static EVP_CIPHER *chacha20_poly1305, *chacha20; /* fetched once, at import */
/* HMAC with BLAKE2s-256 already chosen (and a dummy key): each KDF call duplicates it,
 * sparing the digest's fetch by name; only read after import, by any thread. */
static EVP_MAC_CTX *hmac_blake2s_template;

/* ----- the OpenSSL calls (no GIL, no Python objects) ----------------------------------- */

/* The EVP_PKEY of a private key, and its public half (computed here, once: every exchange
 * reuses the object, so no exchange builds a key or multiplies for the public half again). */
static EVP_PKEY *x25519_private_key(const uint8_t private[KEY_LEN], uint8_t public[KEY_LEN])
{
    size_t len = KEY_LEN;
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, private, KEY_LEN);

    if (key && (EVP_PKEY_get_raw_public_key(key, public, &len) != 1 || len != KEY_LEN)) {
        EVP_PKEY_free(key);
        key = NULL;
    }
    return key;
}

enum { DERIVED = 1, LOW_ORDER = 0, FAILED = -1 };

/* X25519 of a made key and a peer's raw public key. */
static int x25519_derive(EVP_PKEY *key, const uint8_t peer[KEY_LEN], uint8_t shared[KEY_LEN])
{
    EVP_PKEY *peer_key = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer, KEY_LEN);
    EVP_PKEY_CTX *derive = peer_key ? EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL) : NULL;
    size_t len = KEY_LEN;
    uint8_t any = 0;
    int result = FAILED;

    /* No peer validation: a raw X25519 public key is any 32 bytes; the all-zero result
     * below is the check WireGuard asks for. */
    if (!derive || EVP_PKEY_derive_init(derive) != 1
        || EVP_PKEY_derive_set_peer_ex(derive, peer_key, 0) != 1)
        goto done;
    /* OpenSSL refuses an all-zero secret itself (a low-order point); the check after it
     * keeps that promise whatever the version. */
    if (EVP_PKEY_derive(derive, shared, &len) != 1 || len != KEY_LEN) {
        result = LOW_ORDER;
        goto done;
    }
    for (int i = 0; i < KEY_LEN; i++)
        any |= shared[i];
    result = any ? DERIVED : LOW_ORDER;
done:
    EVP_PKEY_CTX_free(derive);
    EVP_PKEY_free(peer_key);
    return result;
}

/* ChaCha20-Poly1305: out gets len bytes of ciphertext and the 16-byte tag. */
static int seal(const uint8_t key[KEY_LEN], const uint8_t nonce[NONCE_LEN], const uint8_t *in,
                int len, const uint8_t *ad, int adlen, uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n;
    int ok = ctx && EVP_EncryptInit_ex2(ctx, chacha20_poly1305, key, nonce, NULL) == 1
             && (adlen == 0 || EVP_EncryptUpdate(ctx, NULL, &n, ad, adlen) == 1)
             && (len == 0 || EVP_EncryptUpdate(ctx, out, &n, in, len) == 1)
             && EVP_EncryptFinal_ex(ctx, out + len, &n) == 1
             && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, out + len) == 1;

    EVP_CIPHER_CTX_free(ctx); /* cleanses the key schedule */
    return ok;
}

enum { OPENED = 1, BAD_TAG = 0 };

/* The inverse of seal: `in` is len bytes of ciphertext then the tag; out gets len bytes,
 * which the caller wipes unless OPENED. */
static int open_(const uint8_t key[KEY_LEN], const uint8_t nonce[NONCE_LEN], const uint8_t *in,
                 int len, const uint8_t *ad, int adlen, uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    uint8_t tag[TAG_LEN];
    int n, result = FAILED;

    memcpy(tag, in + len, TAG_LEN);
    if (ctx && EVP_DecryptInit_ex2(ctx, chacha20_poly1305, key, nonce, NULL) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) == 1
        && (adlen == 0 || EVP_DecryptUpdate(ctx, NULL, &n, ad, adlen) == 1)
        && (len == 0 || EVP_DecryptUpdate(ctx, out, &n, in, len) == 1))
        result = EVP_DecryptFinal_ex(ctx, out + len, &n) == 1 ? OPENED : BAD_TAG;
    EVP_CIPHER_CTX_free(ctx);
    return result;
}

/* HChaCha20: one ChaCha20 block of zeros is the permuted state plus the input state, so
 * subtracting the known input words (the constant, words 0-3; the nonce, words 12-15)
 * leaves the permutation's output at those words. EVP_chacha20's 16-byte IV is the block
 * counter and the nonce, words 12-15 of the state. */
static int hchacha20(const uint8_t key[KEY_LEN], const uint8_t nonce[HNONCE_LEN],
                     uint8_t out[KEY_LEN])
{
    static const uint8_t sigma[] = "expand 32-byte k", zeros[CHACHA_BLOCK]; /* 16 + NUL */
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    uint8_t block[CHACHA_BLOCK];
    int n = 0;
    int ok = ctx && EVP_EncryptInit_ex2(ctx, chacha20, key, nonce, NULL) == 1
             && EVP_EncryptUpdate(ctx, block, &n, zeros, CHACHA_BLOCK) == 1 && n == CHACHA_BLOCK;

    EVP_CIPHER_CTX_free(ctx);
    if (ok)
        for (int i = 0; i < 4; i++) {
            store32(out + 4 * i, load32(block + 4 * i) - load32(sigma + 4 * i));
            store32(out + 16 + 4 * i, load32(block + 48 + 4 * i) - load32(nonce + 4 * i));
        }
    OPENSSL_cleanse(block, sizeof block);
    return ok;
}

/* XChaCha20-Poly1305's key and nonce: HChaCha20 of the first 16 nonce bytes, and 4 zero
 * bytes then the last 8. */
static int extend(const uint8_t key[KEY_LEN], const uint8_t xnonce[XNONCE_LEN],
                  uint8_t subkey[KEY_LEN], uint8_t nonce[NONCE_LEN])
{
    memset(nonce, 0, 4);
    memcpy(nonce + 4, xnonce + HNONCE_LEN, XNONCE_LEN - HNONCE_LEN);
    return hchacha20(key, xnonce, subkey);
}

/* HMAC(key, a || b) into out; b may be empty. */
static int hmac_blake2s(EVP_MAC_CTX *ctx, const uint8_t *key, size_t keylen, const uint8_t *a,
                        size_t alen, const uint8_t *b, size_t blen, uint8_t out[HASH_LEN])
{
    size_t n = 0;

    return EVP_MAC_init(ctx, key, keylen, NULL) == 1
           && (alen == 0 || EVP_MAC_update(ctx, a, alen) == 1)
           && (blen == 0 || EVP_MAC_update(ctx, b, blen) == 1)
           && EVP_MAC_final(ctx, out, &n, HASH_LEN) == 1 && n == HASH_LEN;
}

/* WireGuard's KDF_n: t0 = HMAC(key, data), t_i = HMAC(t0, t_(i-1) || i), out the first
 * `outputs` of t_1..t_3. */
static int kdf(const uint8_t *key, size_t keylen, const uint8_t *data, size_t datalen,
               int outputs, uint8_t out[KDF_MAX][HASH_LEN])
{
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(hmac_blake2s_template);
    uint8_t t0[HASH_LEN];
    int ok = ctx && hmac_blake2s(ctx, key, keylen, data, datalen, NULL, 0, t0);

    for (int i = 0; ok && i < outputs; i++) {
        uint8_t counter = (uint8_t)(i + 1);

        ok = hmac_blake2s(ctx, t0, HASH_LEN, i ? out[i - 1] : NULL, i ? HASH_LEN : 0,
                          &counter, 1, out[i]);
    }
    EVP_MAC_CTX_free(ctx); /* cleanses the keyed state */
    OPENSSL_cleanse(t0, HASH_LEN);
    return ok;
}

/* ----- the Python functions ------------------------------------------------------------ */

static int exact(const Py_buffer *b, Py_ssize_t len, const char *what)
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

static PyObject *openssl_failed(const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "OpenSSL failed in %s", what);
    return NULL;
}

/* ----- X25519Key: a private key's EVP_PKEY, made once ---------------------------------- */

static PyObject *KeyWiped; /* the exception of an exchange with a wiped key */

typedef struct {
    PyObject_HEAD
    /* NULL once wiped. Written only with the GIL held; an exchange holds its own reference
     * while the GIL is released, so a wipe meanwhile frees the key after that exchange. */
    EVP_PKEY *key;
    PyObject *public; /* bytes */
} X25519Key;

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

PyDoc_STRVAR(exchange_doc,
"exchange(peer, /) -> bytes | None\n\n"
"X25519 with a peer's 32-byte public key: the shared secret, or None when it is all zero\n"
"(a low-order point). KeyWiped once the key was wiped.");

static PyObject *X25519Key_exchange(X25519Key *self, PyObject *arg)
{
    Py_buffer in;
    uint8_t peer[KEY_LEN], shared[KEY_LEN];
    EVP_PKEY *key = self->key;
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
    if (!key) {
        PyErr_SetString(KeyWiped, "the private key was wiped");
        return NULL;
    }
    if (EVP_PKEY_up_ref(key) != 1)
        return openssl_failed("X25519");
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

static PyTypeObject X25519KeyType = {
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef handshake_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpn.core.wireguard._handshake",
    .m_doc = "The handshake's X25519, AEADs and KDF over OpenSSL libcrypto, the GIL released.",
    .m_size = -1,
    .m_methods = handshake_methods,
};

/* The HMAC-BLAKE2s template: NULL when OpenSSL has no HMAC or no BLAKE2S-256. */
static EVP_MAC_CTX *make_hmac_blake2s(void)
{
    static const uint8_t dummy_key[HASH_LEN];
    char digest[] = "BLAKE2S-256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;

    EVP_MAC_free(mac); /* the context keeps its own reference */
    if (ctx && EVP_MAC_init(ctx, dummy_key, HASH_LEN, params) == 1)
        return ctx;
    EVP_MAC_CTX_free(ctx);
    return NULL;
}

PyMODINIT_FUNC PyInit__handshake(void)
{
    if (!hmac_blake2s_template)
        hmac_blake2s_template = make_hmac_blake2s();
    if (!chacha20_poly1305)
        chacha20_poly1305 = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (!chacha20)
        chacha20 = EVP_CIPHER_fetch(NULL, "ChaCha20", NULL);
    if (!chacha20_poly1305 || !chacha20 || !hmac_blake2s_template) {
        PyErr_SetString(PyExc_ImportError,
                        "the system OpenSSL has no ChaCha20(-Poly1305) or HMAC-BLAKE2S-256");
        return NULL;
    }
    if (PyType_Ready(&X25519KeyType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&handshake_module);
    if (!module)
        return NULL;
    if (!KeyWiped)
        KeyWiped = PyErr_NewException("vpn.core.wireguard._handshake.KeyWiped", NULL, NULL);
    if (!KeyWiped || PyModule_AddObjectRef(module, "KeyWiped", KeyWiped) < 0
        || PyModule_AddObjectRef(module, "X25519Key", (PyObject *)&X25519KeyType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
