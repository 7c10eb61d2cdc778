/* The Internet checksum's ones'-complement sums (RFC 1071), as vpn/core/packet/checksum.py
 * computes them, for the GSO split and the GRO coalescer. */
#ifndef VPN_CHECKSUM_H
#define VPN_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bytes.h"

/* The plain sum of the big-endian 16-bit words of p[0:n] (n even and small). */
static inline uint64_t word_sum(const uint8_t *p, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        total += be16(p + i);
    return total;
}

/* A value congruent modulo 0xFFFF to the sum of the big-endian 16-bit words of p[0:n] (an odd
 * last byte padded with zero), for any n. Sums little-endian words (2**16 == 1 mod 0xFFFF
 * lets wide loads stand for their 16-bit words) and multiplies by 256, which is the byte
 * swap modulo 0xFFFF (RFC 1071 2(B)). */
static inline uint64_t sum_be(const uint8_t *p, size_t n)
{
    uint64_t total = 0;
    while (n >= 8) {
        /* At most 2**20 bytes per round: the two accumulators cannot overflow. */
        size_t chunk = n < ((size_t)1 << 20) ? n & ~(size_t)7 : (size_t)1 << 20;
        uint64_t a = 0, b = 0;
        for (size_t i = 0; i < chunk; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            a += w & 0xFFFFFFFFu;
            b += w >> 32;
        }
        total += (a + b) % 0xFFFF;
        p += chunk;
        n -= chunk;
    }
    for (; n >= 2; p += 2, n -= 2)
        total += (unsigned)p[0] | (unsigned)p[1] << 8;
    if (n)
        total += p[0];
    return (total % 0xFFFF) << 8;
}

/* checksum.fold: the end-around carry until 16 bits remain. */
static inline uint32_t fold(uint64_t v)
{
    while (v >> 16)
        v = (v & 0xFFFF) + (v >> 16);
    return (uint32_t)v;
}

/* The checksum field for a sum: 0xFFFF - (sum mod 0xFFFF), so a sum congruent to 0 gives
 * 0xFFFF, never 0 (the GSO split's rule, as its reference computes it). */
static inline unsigned csum_finish(uint64_t sum) { return 0xFFFF - (unsigned)(sum % 0xFFFF); }

/* ~ones_complement_sum(header) & 0xFFFF (the GRO coalescer's IPv4 header checksum): the sum
 * is 0 only for all-zero bytes, otherwise it lies in 1..0xFFFF (a multiple of 0xFFFF counts
 * as 0xFFFF). */
static inline unsigned ipv4_checksum(const uint8_t *p, size_t n)
{
    uint64_t s = word_sum(p, n);
    unsigned folded = s ? (unsigned)(s % 0xFFFF) : 0;
    if (s && !folded)
        folded = 0xFFFF;
    return 0xFFFF - folded;
}

/* fold(pseudo_header_sum(src, dst, proto, length)): the addresses' residue modulo 0xFFFF plus
 * proto and length, folded; proto is never zero, so neither is the result. */
static inline unsigned pseudo_sum(uint64_t addr_words, unsigned proto, unsigned length)
{
    return fold(addr_words % 0xFFFF + proto + length);
}

#endif
