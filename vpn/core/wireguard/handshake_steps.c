/* The Noise steps with Diffie-Hellmans, each in one call, the GIL released once. First the
 * responder's whole step (noise.py's answer_known): consume an initiation (DH es, open the
 * static key, find the peer in a PeerTable by it (handshake_table.c: its ss and psk), open
 * the timestamp) and create the response (a new ephemeral key, given or drawn here from
 * OpenSSL's RAND, DH ee and se, the psk, the empty AEAD, the transport keys). The ephemeral
 * key is made, used and freed (OpenSSL cleanses it) inside the step: only its public half
 * leaves. Then the initiator's consume of the response (noise.py's read_response). The
 * Noise IK steps are the whitepaper's, as in noise.py's Python path, which tests prove these
 * equal to; OpenSSL does every primitive.
 *
 * Every input and intermediate secret lives in one struct on this thread's stack, wiped with
 * OPENSSL_cleanse on every path; Python gets only what the Python path keeps.
 */
#include "handshake.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define STATIC_SEALED (KEY_LEN + TAG_LEN)
#define TIMESTAMP_LEN 12
#define TIMESTAMP_SEALED (TIMESTAMP_LEN + TAG_LEN)

/* How a step or half ended: 1-4 are the message's fault (noise.py maps them to drop
 * reasons), STEP_FAILED is OpenSSL's. */
enum { STEP_DONE = 0, STEP_LOW_ORDER = 1, STEP_BAD_STATIC = 2, STEP_BAD_TIMESTAMP = 3,
       STEP_BAD_RESPONSE = 4, STEP_UNKNOWN_PEER = 5, STEP_LOW_ORDER_PEER = 6,
       STEP_FAILED = -1 };

struct step {
    uint8_t ck[HASH_LEN], h[HASH_LEN], shared[KEY_LEN], kdf_out[KDF_MAX][HASH_LEN];
    /* the initiation's fields; a sealed one of another length does not open (as in the
     * Python path, whose AEAD refuses it where it would open it) */
    uint8_t remote_ephemeral[KEY_LEN], sealed_static[STATIC_SEALED],
        sealed_timestamp[TIMESTAMP_SEALED];
    int static_len_ok, timestamp_len_ok, nothing_len_ok;
    /* what the first half opens, what lookup gives */
    uint8_t remote_static[KEY_LEN], ss[KEY_LEN], psk[KEY_LEN], ephemeral_private[KEY_LEN],
        ephemeral_public[KEY_LEN];
    int draw_ephemeral; /* lookup gave None: RAND_priv_bytes in the second half */
    /* the results: the timestamp, the chaining key and hash after the initiation, the
     * response's empty AEAD, the transport keys and the final hash (in h) */
    uint8_t timestamp[TIMESTAMP_LEN], read_ck[HASH_LEN], read_h[HASH_LEN];
    uint8_t sealed_nothing[TAG_LEN], transport[2][HASH_LEN];
    uint8_t empty[1]; /* the empty AEAD's plaintext: somewhere to point */
};

static const uint8_t zero_nonce[NONCE_LEN];

/* ck, out[1..] = KDF_outputs(ck, data). */
static int mix_key(struct step *s, const uint8_t *data, size_t len, int outputs)
{
    if (!kdf(s->ck, HASH_LEN, data, len, outputs, s->kdf_out))
        return 0;
    memcpy(s->ck, s->kdf_out[0], HASH_LEN);
    return 1;
}

/* ck, out[1..] = KDF_outputs(ck, DH(key, peer)). */
static int mix_dh(struct step *s, EVP_PKEY *key, const uint8_t peer[KEY_LEN], int outputs)
{
    int derived = x25519_derive(key, peer, s->shared);

    if (derived != DERIVED)
        return derived == LOW_ORDER ? STEP_LOW_ORDER : STEP_FAILED;
    return mix_key(s, s->shared, KEY_LEN, outputs) ? STEP_DONE : STEP_FAILED;
}

/* The first half, from ck = HASH(CONSTRUCTION) and h = HASH(HASH(ck || IDENTIFIER) || S_r):
 * the initiator's static key opened. */
static int open_static(struct step *s, EVP_PKEY *static_key)
{
    int step, opened;

    if (!mix_key(s, s->remote_ephemeral, KEY_LEN, 1)
        || !mix_hash(s->h, s->remote_ephemeral, KEY_LEN))
        return STEP_FAILED;
    if ((step = mix_dh(s, static_key, s->remote_ephemeral, 2)) != STEP_DONE)
        return step;
    opened = !s->static_len_ok ? BAD_TAG
             : open_(s->kdf_out[1], zero_nonce, s->sealed_static, KEY_LEN, s->h, HASH_LEN,
                     s->remote_static);
    if (opened != OPENED)
        return opened == BAD_TAG ? STEP_BAD_STATIC : STEP_FAILED;
    return mix_hash(s->h, s->sealed_static, STATIC_SEALED) ? STEP_DONE : STEP_FAILED;
}

/* The second half, with the peer's ss and psk and the new ephemeral's private key: the
 * timestamp opened, then the response's empty AEAD, the transport keys and the final hash. */
static int answer(struct step *s)
{
    EVP_PKEY *ephemeral;
    int step, opened;

    if (!mix_key(s, s->ss, KEY_LEN, 2))
        return STEP_FAILED;
    opened = !s->timestamp_len_ok ? BAD_TAG
             : open_(s->kdf_out[1], zero_nonce, s->sealed_timestamp, TIMESTAMP_LEN, s->h,
                     HASH_LEN, s->timestamp);
    if (opened != OPENED)
        return opened == BAD_TAG ? STEP_BAD_TIMESTAMP : STEP_FAILED;
    if (!mix_hash(s->h, s->sealed_timestamp, TIMESTAMP_SEALED))
        return STEP_FAILED;
    memcpy(s->read_ck, s->ck, HASH_LEN);
    memcpy(s->read_h, s->h, HASH_LEN);
    if (s->draw_ephemeral && RAND_priv_bytes(s->ephemeral_private, KEY_LEN) != 1)
        return STEP_FAILED;
    ephemeral = x25519_private_key(s->ephemeral_private, s->ephemeral_public);
    if (!ephemeral)
        return STEP_FAILED;
    step = mix_key(s, s->ephemeral_public, KEY_LEN, 1)
           && mix_hash(s->h, s->ephemeral_public, KEY_LEN) ? STEP_DONE : STEP_FAILED;
    if (step == STEP_DONE && (step = mix_dh(s, ephemeral, s->remote_ephemeral, 1)) == STEP_DONE)
        step = mix_dh(s, ephemeral, s->remote_static, 1);
    EVP_PKEY_free(ephemeral); /* cleansed by OpenSSL */
    if (step != STEP_DONE)
        return step;
    /* ck, tau, key = KDF3(ck, psk); h = HASH(h || tau); the empty AEAD under key */
    if (!mix_key(s, s->psk, KEY_LEN, 3) || !mix_hash(s->h, s->kdf_out[1], HASH_LEN)
        || !seal(s->kdf_out[2], zero_nonce, NULL, 0, s->h, HASH_LEN, s->sealed_nothing)
        || !mix_hash(s->h, s->sealed_nothing, TAG_LEN) || !mix_key(s, NULL, 0, 2))
        return STEP_FAILED;
    memcpy(s->transport, s->kdf_out, sizeof s->transport); /* KDF2(ck, empty) */
    return STEP_DONE;
}

/* Each buffer of the right length, copied into `to`; every buffer released. */
static int take(Py_buffer *b, uint8_t *to, Py_ssize_t len, const char *what, int ok)
{
    ok = ok && exact(b, len, what) == 0;
    if (ok)
        memcpy(to, b->buf, (size_t)len);
    PyBuffer_Release(b);
    return ok;
}

/* A sealed field: copied when of its length; released. Whether it was. */
static int take_sealed(Py_buffer *b, uint8_t *to, Py_ssize_t len)
{
    int ok = b->len == len;

    if (ok)
        memcpy(to, b->buf, (size_t)len);
    PyBuffer_Release(b);
    return ok;
}

/* A step that did not finish: its drop code, or NULL with an exception. */
static PyObject *failed(int step)
{
    return step == STEP_FAILED ? openssl_failed("a handshake step") : PyLong_FromLong(step);
}

/* The responder's step's results. */
static PyObject *answered(const struct step *s)
{
    return Py_BuildValue("(y#y#y#y#y#y#y#y#y#)", s->remote_static, (Py_ssize_t)KEY_LEN,
                         s->timestamp, (Py_ssize_t)TIMESTAMP_LEN, s->read_ck,
                         (Py_ssize_t)HASH_LEN, s->read_h, (Py_ssize_t)HASH_LEN,
                         s->ephemeral_public, (Py_ssize_t)KEY_LEN, s->sealed_nothing,
                         (Py_ssize_t)TAG_LEN, s->transport[0],
                         (Py_ssize_t)HASH_LEN, s->transport[1], (Py_ssize_t)HASH_LEN, s->h,
                         (Py_ssize_t)HASH_LEN);
}

/* ----- the responder's step over a PeerTable: the GIL released once ------------------- */

/* Both halves, the peer looked up in `table` between them. */
static int respond_in_table(struct step *s, EVP_PKEY *static_key, const PeerTable *table,
                            Py_ssize_t *slot)
{
    const struct known_peer *peer;
    int step = open_static(s, static_key);

    if (step != STEP_DONE)
        return step;
    if (!(peer = peer_table_find(table, s->remote_static)))
        return STEP_UNKNOWN_PEER;
    if (!peer->has_ss)
        return STEP_LOW_ORDER_PEER;
    memcpy(s->ss, peer->ss, KEY_LEN);
    memcpy(s->psk, peer->psk, KEY_LEN);
    *slot = peer->slot;
    return answer(s);
}

const char respond_known_doc[] =
"respond_known(static, table, chaining_key, hash, ephemeral, sealed_static,\n"
"              sealed_timestamp, ephemeral_private, /) -> tuple[int, tuple[bytes, ...]] | int\n\n"
"The responder's step over an initiation's three fields, from the first chaining key and\n"
"the responder's first hash, the peer found in a PeerTable, the GIL released once;\n"
"ephemeral_private is the new ephemeral's private key, or None to draw one from OpenSSL's\n"
"RAND. Returns the peer's slot and (remote_static, timestamp, chaining_key, hash after the\n"
"initiation, the ephemeral's public key, the empty AEAD, transport key 1, transport key 2,\n"
"final hash), or 1 (a low-order point), 2 (the static key does not open), 3 (the timestamp\n"
"does not open; a sealed field of another length does not), 5 (no peer has the static\n"
"key) or 6 (the peer's static-static secret is missing: a low-order key).";

PyObject *py_respond_known(PyObject *Py_UNUSED(m), PyObject *args)
{
    X25519Key *static_obj;
    PeerTable *table;
    Py_buffer ck, h, e, sealed_static, sealed_timestamp, ephemeral = {0};
    PyObject *result = NULL;
    EVP_PKEY *key = NULL;
    Py_ssize_t slot = -1;
    struct step s;
    int ok, step;

    if (!PyArg_ParseTuple(args, "O!O!y*y*y*y*y*z*:respond_known", &X25519KeyType, &static_obj,
                          &PeerTableType, &table, &ck, &h, &e, &sealed_static,
                          &sealed_timestamp, &ephemeral))
        return NULL;
    ok = take(&ck, s.ck, HASH_LEN, "the chaining key", 1);
    ok = take(&h, s.h, HASH_LEN, "the hash", ok);
    ok = take(&e, s.remote_ephemeral, KEY_LEN, "the ephemeral key", ok);
    s.static_len_ok = take_sealed(&sealed_static, s.sealed_static, STATIC_SEALED);
    s.timestamp_len_ok = take_sealed(&sealed_timestamp, s.sealed_timestamp, TIMESTAMP_SEALED);
    s.draw_ephemeral = ephemeral.buf == NULL; /* None: nothing to release */
    if (!s.draw_ephemeral)
        ok = take(&ephemeral, s.ephemeral_private, KEY_LEN, "the ephemeral key", ok);
    if (ok && (key = x25519_key_hold(static_obj))) {
        Py_INCREF(table); /* its entries outlive the step, whatever Python swaps meanwhile */
        Py_BEGIN_ALLOW_THREADS
        step = respond_in_table(&s, key, table, &slot);
        EVP_PKEY_free(key);
        Py_END_ALLOW_THREADS
        Py_DECREF(table);
        result = step == STEP_DONE ? Py_BuildValue("(nN)", slot, answered(&s)) : failed(step);
    }
    OPENSSL_cleanse(&s, sizeof s);
    return result;
}

/* ----- the initiator's consume of a response ------------------------------------------- */

/* From the chaining key and hash after our initiation: the response's DHs with our
 * ephemeral and static keys, the psk, its empty AEAD opened, the transport keys. */
static int consume(struct step *s, EVP_PKEY *ephemeral, EVP_PKEY *static_key)
{
    int step, opened;

    if (!mix_key(s, s->remote_ephemeral, KEY_LEN, 1)
        || !mix_hash(s->h, s->remote_ephemeral, KEY_LEN))
        return STEP_FAILED;
    if ((step = mix_dh(s, ephemeral, s->remote_ephemeral, 1)) != STEP_DONE
        || (step = mix_dh(s, static_key, s->remote_ephemeral, 1)) != STEP_DONE)
        return step;
    if (!mix_key(s, s->psk, KEY_LEN, 3) || !mix_hash(s->h, s->kdf_out[1], HASH_LEN))
        return STEP_FAILED;
    opened = !s->nothing_len_ok ? BAD_TAG
             : open_(s->kdf_out[2], zero_nonce, s->sealed_nothing, 0, s->h, HASH_LEN,
                     s->empty);
    if (opened != OPENED)
        return opened == BAD_TAG ? STEP_BAD_RESPONSE : STEP_FAILED;
    if (!mix_hash(s->h, s->sealed_nothing, TAG_LEN) || !mix_key(s, NULL, 0, 2))
        return STEP_FAILED;
    memcpy(s->transport, s->kdf_out, sizeof s->transport); /* KDF2(ck, empty) */
    return STEP_DONE;
}

const char consume_response_doc[] =
"consume_response(static, ephemeral, chaining_key, hash, psk, remote_ephemeral,\n"
"                 sealed_nothing, /) -> tuple[bytes, bytes, bytes] | int\n\n"
"The initiator's consume of a response, from the chaining key and hash after its\n"
"initiation, with its static and ephemeral X25519Keys: (transport key 1, transport key 2,\n"
"final hash), or 1 (a low-order point), 4 (the empty AEAD does not open; one of another\n"
"length does not).";

PyObject *py_consume_response(PyObject *Py_UNUSED(m), PyObject *args)
{
    X25519Key *static_obj, *ephemeral_obj;
    Py_buffer ck, h, psk, e, sealed_nothing;
    EVP_PKEY *ephemeral = NULL, *static_key = NULL;
    PyObject *result = NULL;
    struct step s;
    int ok, step;

    if (!PyArg_ParseTuple(args, "O!O!y*y*y*y*y*:consume_response", &X25519KeyType,
                          &static_obj, &X25519KeyType, &ephemeral_obj, &ck, &h, &psk, &e,
                          &sealed_nothing))
        return NULL;
    ok = take(&ck, s.ck, HASH_LEN, "the chaining key", 1);
    ok = take(&h, s.h, HASH_LEN, "the hash", ok);
    ok = take(&psk, s.psk, KEY_LEN, "the psk", ok);
    ok = take(&e, s.remote_ephemeral, KEY_LEN, "the ephemeral key", ok);
    s.nothing_len_ok = take_sealed(&sealed_nothing, s.sealed_nothing, TAG_LEN);
    /* the ephemeral first: the Python path's first DH is with it */
    if (ok && (ephemeral = x25519_key_hold(ephemeral_obj)))
        static_key = x25519_key_hold(static_obj);
    if (static_key) {
        Py_BEGIN_ALLOW_THREADS
        step = consume(&s, ephemeral, static_key);
        Py_END_ALLOW_THREADS
        result = step != STEP_DONE ? failed(step)
                 : Py_BuildValue("(y#y#y#)", s.transport[0], (Py_ssize_t)HASH_LEN,
                                 s.transport[1], (Py_ssize_t)HASH_LEN, s.h,
                                 (Py_ssize_t)HASH_LEN);
    }
    EVP_PKEY_free(ephemeral);
    EVP_PKEY_free(static_key);
    OPENSSL_cleanse(&s, sizeof s);
    return result;
}
