/* What the pieces of the _transport module share (see _transport.c): the key object, the
 * helpers of every batch, and the message layout's arithmetic. Include it first. */
#ifndef VPN_TRANSPORT_H
#define VPN_TRANSPORT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "bytes.h"
#include "counts.h"
#include "wire.h"

/* OpenSSL's update calls take an int length. */
#define MAX_BODY (INT_MAX - TRANSPORT_MIN_SIZE)

/* Idle OpenSSL contexts kept per direction: one per thread that uses the key at once (a
 * busier key makes more on demand and frees those beyond this when they come back). */
#define IDLE_CONTEXTS 8

enum { SEALING, OPENING, DIRECTIONS };

/* Every field is read and written only with the GIL held: a batch takes a context of its
 * own (begin_batch), runs without the GIL on it alone, and gives it back (end_batch), so N
 * threads can seal or open with one key at once, and the two directions never meet. */
typedef struct {
    PyObject_HEAD
    uint8_t key[KEY_LEN]; /* for keying a new context; wiped by zero() and dealloc */
    int keyed;            /* 0 before __init__ and after zero(): batches raise ValueError */
    int running;          /* batches out with a context of this key */
    int idle_count[DIRECTIONS];
    EVP_CIPHER_CTX *idle[DIRECTIONS][IDLE_CONTEXTS]; /* keyed, per message only the nonce changes */
} TransportKey;

/* The 96-bit nonce: 32 zero bits, then the counter, little-endian. */
static inline void make_nonce(uint8_t nonce[12], uint64_t counter)
{
    memset(nonce, 0, 4);
    store64(nonce + 4, counter);
}

/* keypair.padded_length: pad to 16, never past a nonzero mtu (a longer packet stays as is). */
static inline Py_ssize_t padded_length(Py_ssize_t n, Py_ssize_t mtu)
{
    Py_ssize_t padded = (n + PADDING_MULTIPLE - 1) & -(Py_ssize_t)PADDING_MULTIPLE;
    if (mtu && padded > mtu)
        return n > mtu ? n : mtu;
    return padded;
}

/* _transport.c: claiming a key for a batch, and the buffers of every call. */
EVP_CIPHER_CTX *begin_batch(TransportKey *self, int direction);
void end_batch(TransportKey *self, int direction, EVP_CIPHER_CTX *ctx);
int parse_index(PyObject *obj, const char *name, uint32_t *out);
int check_out(Py_buffer *out, Py_ssize_t offset, Py_ssize_t need);
Py_buffer *get_views(PyObject *items, Py_ssize_t count);
void release_views(Py_buffer *views, Py_ssize_t count);
PyObject *lengths_list(const Py_ssize_t *lengths, Py_ssize_t count);

/* transport_seal.c */
PyObject *TransportKey_seal_batch(TransportKey *self, PyObject *args);
PyObject *TransportKey_seal_segments(TransportKey *self, PyObject *args);
PyObject *TransportKey_seal_runs(TransportKey *self, PyObject *args);
extern const char seal_batch_doc[], seal_segments_doc[], seal_runs_doc[];

/* transport_open.c */
int open_message(EVP_CIPHER_CTX *ctx, const uint8_t *msg, int n, uint8_t *plain,
                 uint64_t counter);
PyObject *TransportKey_open_batch(TransportKey *self, PyObject *args);

/* transport_run.c */
PyObject *TransportKey_open_run(TransportKey *self, PyObject *args);
PyObject *TransportKey_open_runs(TransportKey *self, PyObject *args);
PyObject *accept_run(PyObject *module, PyObject *args);
extern const char open_batch_doc[], open_run_doc[], open_runs_doc[], accept_run_doc[];

#endif
