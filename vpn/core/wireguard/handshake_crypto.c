/* The handshake's OpenSSL calls (no GIL, no Python objects): X25519, ChaCha20-Poly1305
 * one-shot seal/open with associated data, HChaCha20 for XChaCha20-Poly1305 (the cookie
 * reply), WireGuard's KDF (HMAC over BLAKE2s-256, EVP_MAC) and Noise's MixHash (BLAKE2s-256).
 *
 * No curve or cipher arithmetic here: OpenSSL does all of it. HChaCha20 is one ChaCha20
 * block less its input words (DESIGN.md), the same derivation as crypto.py's reference.
 * Callers pass keys in their own arrays and wipe them (OPENSSL_cleanse); OpenSSL cleanses
 * its own copies when its objects are freed, and every derived secret here is wiped.
 */
#include "handshake.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include "bytes.h"

#define CHACHA_BLOCK 64

static EVP_CIPHER *chacha20_poly1305, *chacha20; /* fetched once, at import */
static EVP_MD *blake2s;                            /* MixHash's */
/* HMAC with BLAKE2s-256 already chosen (and a dummy key): each KDF call duplicates it,
 * sparing the digest's fetch by name; only read after import, by any thread. */
static EVP_MAC_CTX *hmac_blake2s_template;

/* The EVP_PKEY of a private key, and its public half (computed here, once: every exchange
 * reuses the object, so no exchange builds a key or multiplies for the public half again). */
EVP_PKEY *x25519_private_key(const uint8_t private[KEY_LEN], uint8_t public[KEY_LEN])
{
    size_t len = KEY_LEN;
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, private, KEY_LEN);

    if (key && (EVP_PKEY_get_raw_public_key(key, public, &len) != 1 || len != KEY_LEN)) {
        EVP_PKEY_free(key);
        key = NULL;
    }
    return key;
}

/* X25519 of a made key and a peer's raw public key. */
int x25519_derive(EVP_PKEY *key, const uint8_t peer[KEY_LEN], uint8_t shared[KEY_LEN])
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
int seal(const uint8_t key[KEY_LEN], const uint8_t nonce[NONCE_LEN], const uint8_t *in,
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

/* The inverse of seal: `in` is len bytes of ciphertext then the tag; out gets len bytes,
 * which the caller wipes unless OPENED. */
int open_(const uint8_t key[KEY_LEN], const uint8_t nonce[NONCE_LEN], const uint8_t *in,
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
int hchacha20(const uint8_t key[KEY_LEN], const uint8_t nonce[HNONCE_LEN],
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
int extend(const uint8_t key[KEY_LEN], const uint8_t xnonce[XNONCE_LEN],
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
int kdf(const uint8_t *key, size_t keylen, const uint8_t *data, size_t datalen,
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

int mix_hash(uint8_t h[HASH_LEN], const uint8_t *data, size_t len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 0;
    int ok = ctx && EVP_DigestInit_ex2(ctx, blake2s, NULL) == 1
             && EVP_DigestUpdate(ctx, h, HASH_LEN) == 1
             && (len == 0 || EVP_DigestUpdate(ctx, data, len) == 1)
             && EVP_DigestFinal_ex(ctx, h, &n) == 1 && n == HASH_LEN;

    EVP_MD_CTX_free(ctx);
    return ok;
}

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

int handshake_crypto_init(void)
{
    if (!hmac_blake2s_template)
        hmac_blake2s_template = make_hmac_blake2s();
    if (!chacha20_poly1305)
        chacha20_poly1305 = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (!chacha20)
        chacha20 = EVP_CIPHER_fetch(NULL, "ChaCha20", NULL);
    if (!blake2s)
        blake2s = EVP_MD_fetch(NULL, "BLAKE2S-256", NULL);
    return chacha20_poly1305 && chacha20 && hmac_blake2s_template && blake2s;
}
