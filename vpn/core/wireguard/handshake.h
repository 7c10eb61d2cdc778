/* What the handshake module's files share (_handshake.c: the module and its one-shot
 * calls; handshake_crypto.c: the OpenSSL calls; handshake_key.c: X25519Key;
 * handshake_table.c: PeerTable; handshake_steps.c: the responder's whole step and the
 * initiator's consume of a response). */
#ifndef VPN_HANDSHAKE_H
#define VPN_HANDSHAKE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "wire.h" /* KEY_LEN, HASH_LEN (BLAKE2s-256), AEAD_TAG_LEN */

#define TAG_LEN AEAD_TAG_LEN
#define NONCE_LEN 12
#define HNONCE_LEN 16
#define XNONCE_LEN 24
#define MAX_TEXT (INT_MAX - TAG_LEN) /* OpenSSL's update calls take an int length */
#define KDF_MAX 3

/* Calls over fewer bytes than this keep the GIL. Handshake-sized ones take 1-4 us, and
 * letting go costs more: taking the GIL back waits until the holder lets go, up to the
 * switch interval (5 ms) while the event loop's thread runs Python. A handshake worker
 * that let go in its eight KDFs and three AEADs, as well as in its four X25519s, spent
 * that wait up to fifteen times a message (handshake_steps.c lets go once a half). */
#define RELEASE_MIN 4096

/* Py_BEGIN/END_ALLOW_THREADS, only when `release`. */
#define BEGIN_ALLOW_THREADS_IF(release)                                                  \
    {                                                                                    \
        PyThreadState *_save = (release) ? PyEval_SaveThread() : NULL;
#define END_ALLOW_THREADS_IF                                                             \
    if (_save)                                                                           \
        PyEval_RestoreThread(_save);                                                     \
    }

/* ----- handshake_crypto.c: the OpenSSL calls (no GIL, no Python objects) --------------- */

enum { DERIVED = 1, LOW_ORDER = 0, FAILED = -1 }; /* x25519_derive */
enum { OPENED = 1, BAD_TAG = 0 };                   /* open_ (or FAILED) */

int handshake_crypto_init(void); /* at import: 0 when OpenSSL lacks an algorithm */
EVP_PKEY *x25519_private_key(const uint8_t private[KEY_LEN], uint8_t public[KEY_LEN]);
int x25519_derive(EVP_PKEY *key, const uint8_t peer[KEY_LEN], uint8_t shared[KEY_LEN]);
int seal(const uint8_t key[KEY_LEN], const uint8_t nonce[NONCE_LEN], const uint8_t *in,
         int len, const uint8_t *ad, int adlen, uint8_t *out);
int open_(const uint8_t key[KEY_LEN], const uint8_t nonce[NONCE_LEN], const uint8_t *in,
          int len, const uint8_t *ad, int adlen, uint8_t *out);
int hchacha20(const uint8_t key[KEY_LEN], const uint8_t nonce[HNONCE_LEN],
              uint8_t out[KEY_LEN]);
int extend(const uint8_t key[KEY_LEN], const uint8_t xnonce[XNONCE_LEN],
           uint8_t subkey[KEY_LEN], uint8_t nonce[NONCE_LEN]);
int kdf(const uint8_t *key, size_t keylen, const uint8_t *data, size_t datalen, int outputs,
        uint8_t out[KDF_MAX][HASH_LEN]);
/* Noise's MixHash: h = BLAKE2s-256(h || data). */
int mix_hash(uint8_t h[HASH_LEN], const uint8_t *data, size_t len);

/* ----- _handshake.c: argument checks and errors ---------------------------------------- */

int exact(const Py_buffer *b, Py_ssize_t len, const char *what);
PyObject *openssl_failed(const char *what);

/* ----- handshake_key.c: X25519Key, a private key's EVP_PKEY made once ------------------ */

extern PyObject *KeyWiped; /* the exception of an exchange with a wiped key */

typedef struct {
    PyObject_HEAD
    /* NULL once wiped. Written only with the GIL held; an exchange holds its own reference
     * while the GIL is released, so a wipe meanwhile frees the key after that exchange. */
    EVP_PKEY *key;
    PyObject *public; /* bytes */
} X25519Key;

extern PyTypeObject X25519KeyType;
/* The key with a reference of the caller's own (EVP_PKEY_free it), or NULL with KeyWiped
 * or an OpenSSL error set. */
EVP_PKEY *x25519_key_hold(X25519Key *self);

/* ----- handshake_table.c: PeerTable, the peers the responder's step looks up ----------- */

struct known_peer {
    uint8_t public[KEY_LEN], ss[KEY_LEN], psk[KEY_LEN];
    int has_ss; /* 0: a low-order key, or no private key */
    Py_ssize_t slot;
};

typedef struct {
    PyObject_HEAD
    struct known_peer *peers; /* sorted by public key; never written after it is built */
    Py_ssize_t count;
} PeerTable;

extern PyTypeObject PeerTableType;
/* The peer with this static key, or NULL; any thread, no GIL needed. */
const struct known_peer *peer_table_find(const PeerTable *table,
                                         const uint8_t public[KEY_LEN]);

/* ----- handshake_steps.c --------------------------------------------------------------- */

PyObject *py_respond_known(PyObject *module, PyObject *args);
extern const char respond_known_doc[];
PyObject *py_consume_response(PyObject *module, PyObject *args);
extern const char consume_response_doc[];

#endif
