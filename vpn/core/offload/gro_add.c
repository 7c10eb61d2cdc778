/* Adding packets for _gro.c: Coalescer.add, _add_tcp and _add_udp of gro.py, one packet at
 * a time, parsed from a local copy of its first bytes. */
#include "gro.h"

static void out_pass(Coalescer *c, uint32_t pi) { c->out[c->nout++] = OUT_PASS | pi; }

/* _pass_flow */
static void pass_flow(Coalescer *c, const uint8_t *key, uint32_t pi)
{
    flows_pop(c, key, key_hash(key));
    out_pass(c, pi);
}

static void make_key(uint8_t *key, uint8_t kind, const uint8_t *from, size_t n)
{
    memset(key, 0, FLOW_KEY_LEN);
    key[0] = kind;
    memcpy(key + 1, from, n);
}

static void run_append(Coalescer *c, struct run *r, uint32_t pi, uint32_t payload)
{
    c->packets[r->last].next = pi;
    r->last = pi;
    r->count++;
    r->total += payload;
}

static struct run *new_run(Coalescer *c, const uint8_t *key, uint32_t hash, long found,
                           const uint8_t *sig, uint32_t pi)
{
    uint32_t ri = (uint32_t)c->nruns++;
    struct run *r = &c->runs[ri];
    memcpy(r->sig, sig, SIG_LEN);
    r->first = r->last = pi;
    r->count = 1;
    r->psh = 0;
    flows_set(c, found, key, hash, ri);
    c->out[c->nout++] = ri;
    return r;
}

/* _add_tcp */
static void add_tcp(Coalescer *c, const uint8_t *key, const uint8_t *sig, uint32_t pi,
                    unsigned ihl, unsigned hlen, size_t n, uint32_t seq, unsigned flags,
                    int is_v4)
{
    uint32_t payload = (uint32_t)(n - hlen);
    uint32_t hash = key_hash(key);
    long found = flows_find(c, key, hash);
    if (found >= 0) {
        struct run *r = &c->runs[c->slots[found].run];
        if (r->open && !memcmp(r->sig, sig, SIG_LEN) && r->next_seq == seq &&
            payload <= r->seg_size && r->total + payload <= c->max_size) {
            run_append(c, r, pi, payload);
            r->next_seq = seq + payload; /* modulo 2**32 */
            if (flags == (TCP_ACK_FLAG | TCP_PSH)) {
                r->psh = 1;
                r->open = 0;
            } else if (payload < r->seg_size) {
                r->open = 0;
            }
            return;
        }
    }
    struct run *r = new_run(c, key, hash, found, sig, pi);
    r->ihl = (uint16_t)ihl;
    r->hlen = (uint16_t)hlen;
    r->seg_size = payload;
    r->total = (int64_t)n;
    r->next_seq = seq + payload;
    r->is_v4 = (uint8_t)is_v4;
    r->is_tcp = 1;
    r->open = flags == TCP_ACK_FLAG;
    r->psh = flags == (TCP_ACK_FLAG | TCP_PSH);
}

/* _add_udp */
static void add_udp(Coalescer *c, const uint8_t *key, const uint8_t *sig, uint32_t pi,
                    unsigned ihl, size_t n, int is_v4)
{
    uint32_t payload = (uint32_t)(n - ihl - 8);
    uint32_t hash = key_hash(key);
    long found = flows_find(c, key, hash);
    if (found >= 0) {
        struct run *r = &c->runs[c->slots[found].run];
        if (r->open && !memcmp(r->sig, sig, SIG_LEN) && payload <= r->seg_size &&
            r->total + payload <= c->max_size && r->count < MAX_UDP_SEGMENTS) {
            run_append(c, r, pi, payload);
            if (payload < r->seg_size)
                r->open = 0;
            return;
        }
    }
    struct run *r = new_run(c, key, hash, found, sig, pi);
    r->ihl = (uint16_t)ihl;
    r->hlen = (uint16_t)(ihl + 8);
    r->seg_size = payload;
    r->total = (int64_t)n;
    r->next_seq = 0;
    r->is_v4 = (uint8_t)is_v4;
    r->is_tcp = 0;
    r->open = 1;
}

/* The data offset is valid, the flags are TCP_ACK_FLAG or TCP_ACK_FLAG|PSH and there is a payload. */
static int tcp_ok(unsigned off, unsigned flags, unsigned thl, unsigned hlen, size_t n)
{
    return thl >= 20 && hlen <= n && (flags == TCP_ACK_FLAG || flags == (TCP_ACK_FLAG | TCP_PSH)) && !(off & 0x0F) &&
           hlen != n;
}

/* One packet, as the body of the loop in Coalescer.add. */
void add_packet(Coalescer *c, uint32_t pi)
{
    const struct packet *pk = &c->packets[pi];
    size_t n = pk->len;
    uint8_t h[HEAD_MAX], key[FLOW_KEY_LEN], sig[SIG_LEN];
    memcpy(h, (const uint8_t *)c->view.buf + pk->offset, n < HEAD_MAX ? n : HEAD_MAX);
    if (n < 28) {
        if (n != 0 && (h[0] >> 4 == 4 || h[0] >> 4 == 6))
            flows_clear(c); /* an IP packet we cannot place: keep every flow's order */
        out_pass(c, pi);
        return;
    }
    memset(sig, 0, SIG_LEN);
    if (h[0] == 0x45) {
        unsigned proto = h[9], total = be16(h + 2), frag = be16(h + 6);
        if (proto == PROTO_TCP) {
            if (n < 40) {
                flows_clear(c);
                out_pass(c, pi);
                return;
            }
            make_key(key, KEY_TCP4, h + 12, 12);
            unsigned off = h[32], flags = h[33], thl = (off >> 4) << 2, hlen = 20 + thl;
            if (total != n || (frag & 0xBFFF) || !tcp_ok(off, flags, thl, hlen, n)) {
                if (frag & 0x3FFF)
                    flows_clear(c); /* a fragment: the ports we read may not be ports */
                pass_flow(c, key, pi);
                return;
            }
            sig[0] = h[1];
            sig[4] = h[8];
            memcpy(sig + 5, h + 6, 2);
            memcpy(sig + 7, h + 28, 4);
            memcpy(sig + 11, h + 34, 2);
            sig[13] = h[32];
            memcpy(sig + SIG_OPTIONS, h + 40, thl - 20); /* hlen <= n, hlen <= 80 */
            add_tcp(c, key, sig, pi, 20, hlen, n, be32(h + 24), flags, 1);
            return;
        }
        if (proto == PROTO_UDP && c->udp) {
            make_key(key, KEY_UDP4, h + 12, 12);
            unsigned ulen = be16(h + 24);
            if (total != n || (frag & 0xBFFF) || ulen != n - 20 || ulen == 8) {
                if (frag & 0x3FFF)
                    flows_clear(c);
                pass_flow(c, key, pi);
                return;
            }
            sig[0] = h[1];
            sig[4] = h[8];
            memcpy(sig + 5, h + 6, 2);
            add_udp(c, key, sig, pi, 20, n, 1);
            return;
        }
        /* Other protocols, and UDP when no UDP runs are kept, have no run to keep in order. */
        out_pass(c, pi);
        return;
    }
    if (h[0] >> 4 == 6 && n >= 48) {
        unsigned nh = h[6], plen = be16(h + 4);
        if (nh == PROTO_TCP && n >= 60) {
            make_key(key, KEY_TCP6, h + 8, 36);
            unsigned off = h[52], flags = h[53], thl = (off >> 4) << 2, hlen = 40 + thl;
            if (plen + 40 != n || !tcp_ok(off, flags, thl, hlen, n)) {
                pass_flow(c, key, pi);
                return;
            }
            memcpy(sig, h, 4);
            sig[4] = h[7];
            memcpy(sig + 7, h + 48, 4);
            memcpy(sig + 11, h + 54, 2);
            sig[13] = h[52];
            memcpy(sig + SIG_OPTIONS, h + 60, thl - 20); /* hlen <= n, hlen <= 100 */
            add_tcp(c, key, sig, pi, 40, hlen, n, be32(h + 44), flags, 0);
            return;
        }
        if (nh == PROTO_UDP) {
            if (!c->udp) {
                out_pass(c, pi);
                return;
            }
            make_key(key, KEY_UDP6, h + 8, 36);
            unsigned ulen = be16(h + 44);
            if (plen + 40 != n || ulen != plen || ulen == 8) {
                pass_flow(c, key, pi);
                return;
            }
            memcpy(sig, h, 4);
            sig[4] = h[7];
            add_udp(c, key, sig, pi, 40, n, 0);
            return;
        }
        if (nh == 58 || nh == 59) { /* ICMPv6, no next header: in no TCP or UDP flow */
            out_pass(c, pi);
            return;
        }
    } else if (h[0] >> 4 != 4 || (h[9] != PROTO_TCP && h[9] != PROTO_UDP)) {
        /* Not IP, or IPv4 (with options) of a protocol we never coalesce. */
        out_pass(c, pi);
        return;
    }
    /* IPv4 with options, IPv6 with extension headers, short TCP...: close every run. */
    flows_clear(c);
    out_pass(c, pi);
}
