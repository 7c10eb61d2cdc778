/* The native twin of vpn.core.offload.gro.Coalescer: packets that lie in one caller's buffer
 * (named by records of offset, length and slot) coalesced into virtio-net frames for a TUN
 * write.
 *
 * The Python code in gro.py is the reference; this file must give byte-identical frames and
 * the same segment counts, in the same order, for any input. The two are transliterations of
 * each other: add_packet is Coalescer.add, add_tcp/add_udp are _add_tcp/_add_udp, fill_run is
 * _finish, and the flow table is the dict `flows` (get, set, pop, clear) with the same bound:
 * before a new key goes in while MAX_FLOWS keys are held, every flow is forgotten.
 *
 * State: `packets` holds every packet added (offset and length in the buffer, and the next
 * packet of its run), `runs` the runs, and `out` the frames in order, each a run or (with
 * OUT_PASS set) a packet that passes through alone. Nothing is copied until frames(): a
 * frame is built from the buffer as it is then, as the reference builds it from its views.
 *
 * Safety: every header is parsed from a local copy of the packet's first bytes (at most
 * HEAD_MAX, bounded by the packet's length), so each length is checked once and nothing is
 * read outside a packet's record, even if another thread writes to the buffer while the GIL
 * is released. The buffer cannot shrink: the exported view is held for the object's life.
 * Records are read once, with the GIL, and checked against the buffer before any state
 * changes. A coalescer in a call (busy, from claim() on) refuses every other call. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_PSH 0x08
#define ACK 0x10
#define ACK_PSH 0x18

/* virtio_net.h */
#define FLAG_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define VNET_HDR_LEN 10

/* gro.py's MAX_FLOWS and MAX_UDP_SEGMENTS (a test checks they agree). */
#define MAX_FLOWS 1024
#define MAX_UDP_SEGMENTS 64

/* The most of a packet any rule reads: an IPv6 header and the largest TCP header. */
#define HEAD_MAX 100
/* A flow key: its kind, then the addresses and ports (12 bytes for IPv4, 36 for IPv6), zero
 * padded so keys compare as fixed-size blobs. */
#define KEY_LEN 40
#define KEY_TCP4 1
#define KEY_UDP4 2
#define KEY_TCP6 3
#define KEY_UDP6 4
/* A run's signature (the reference's `sig` tuple), laid out as a blob that is equal exactly
 * when the tuples are: [0:4] tos (IPv4) or the first word (IPv6), [4] ttl or hop limit,
 * [5:7] IPv4 frag field, [7:11] ack, [11:13] window, [13] data offset, [16:56] TCP options.
 * The data offset fixes how many option bytes there are; the rest stays zero. */
#define SIG_LEN 56
#define SIG_OPTIONS 16

/* Open addressing with linear probing, twice as many slots as keys so chains stay short. */
#define TABLE_SLOTS 2048
#define TABLE_MASK (TABLE_SLOTS - 1)

/* An out entry with this bit is a packet index (passes through alone), else a run index. */
#define OUT_PASS 0x80000000u
#define MAX_ITEMS 0x7FFFFFFFu
#define NO_PACKET 0xFFFFFFFFu

/* Below this much work the GIL is kept: releasing it costs more than the loop. */
#define GIL_MIN_PACKETS 16
#define GIL_MIN_BYTES 16384

struct packet {
    uint32_t offset, len;
    uint32_t next; /* the next packet of the same run, or NO_PACKET */
};

struct run {
    uint8_t sig[SIG_LEN];
    int64_t total;          /* IP length of the frame so far */
    uint32_t first, last;   /* packet indices */
    uint32_t count;
    uint32_t seg_size;      /* the first packet's payload */
    uint32_t next_seq;
    uint16_t ihl, hlen;
    uint8_t is_v4, is_tcp, open, psh;
};

struct slot {
    uint8_t key[KEY_LEN];
    uint32_t gen;  /* live when equal to the table's generation */
    uint32_t hash;
    uint32_t run;
};

typedef struct {
    PyObject_HEAD
    Py_buffer view;         /* the caller's buffer, held for the object's life */
    char udp;               /* a char: the T_BOOL member reads one */
    Py_ssize_t max_size;
    int busy;               /* a call is running: every other call is refused (claim) */
    struct packet *packets;
    struct run *runs;
    uint32_t *out;
    size_t npackets, nruns, nout, cap;  /* each array has room for cap entries */
    struct slot *slots;
    uint32_t gen, nflows;
} Coalescer;

/* Keyed per process (os.urandom at import) so crafted addresses and ports cannot pile up on
 * one probe chain; the MAX_FLOWS bound caps the worst case anyway. */
static uint64_t hash_seed;

/* VirtioNetHeader() packed: what every frame that is not coalesced starts with. */
static PyObject *no_offload;

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static void put16le(uint8_t *p, unsigned v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

/* The plain sum of the big-endian 16-bit words of p[0:n] (n even and small). */
static uint64_t word_sum(const uint8_t *p, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        total += be16(p + i);
    return total;
}

static uint32_t fold(uint64_t v)
{
    while (v >> 16)
        v = (v & 0xFFFF) + (v >> 16);
    return (uint32_t)v;
}

/* ~ones_complement_sum(header) & 0xFFFF: the sum is 0 only for all-zero bytes, otherwise it
 * lies in 1..0xFFFF (a multiple of 0xFFFF counts as 0xFFFF). */
static unsigned ipv4_checksum(const uint8_t *p, size_t n)
{
    uint64_t s = word_sum(p, n);
    unsigned folded = s ? (unsigned)(s % 0xFFFF) : 0;
    if (s && !folded)
        folded = 0xFFFF;
    return 0xFFFF - folded;
}

/* fold(pseudo_header_sum(src, dst, proto, length)): the addresses' residue modulo 0xFFFF plus
 * proto and length, folded; proto is never zero, so neither is the result. */
static unsigned pseudo_sum(uint64_t addr_words, unsigned proto, unsigned length)
{
    return fold(addr_words % 0xFFFF + proto + length);
}

static uint32_t key_hash(const uint8_t *key)
{
    uint64_t h = hash_seed;
    for (int i = 0; i < KEY_LEN; i += 8) {
        uint64_t w;
        memcpy(&w, key + i, 8);
        h ^= w;
        h *= 0x9E3779B97F4A7C15u;
        h ^= h >> 29;
    }
    /* murmur3's finalizer: every key bit reaches the low (slot) bits */
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDu;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53u;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* ---- the flow table: the reference's dict, keys to run indices ---- */

static int slot_live(const Coalescer *c, size_t i) { return c->slots[i].gen == c->gen; }

/* flows.clear(): a new generation makes every slot dead at once. */
static void flows_clear(Coalescer *c)
{
    c->nflows = 0;
    if (++c->gen == 0) { /* wrapped: old generations could come back to life */
        memset(c->slots, 0, sizeof(struct slot) * TABLE_SLOTS);
        c->gen = 1;
    }
}

/* The slot holding key, or -1. Ends: at most MAX_FLOWS of the slots are live. */
static long flows_find(const Coalescer *c, const uint8_t *key, uint32_t hash)
{
    for (size_t i = hash & TABLE_MASK;; i = (i + 1) & TABLE_MASK) {
        if (!slot_live(c, i))
            return -1;
        if (c->slots[i].hash == hash && !memcmp(c->slots[i].key, key, KEY_LEN))
            return (long)i;
    }
}

/* flows[key] = run, with the MAX_FLOWS rule; found is flows_find's answer for key. */
static void flows_set(Coalescer *c, long found, const uint8_t *key, uint32_t hash,
                      uint32_t run)
{
    if (found >= 0) {
        c->slots[found].run = run;
        return;
    }
    if (c->nflows >= MAX_FLOWS)
        flows_clear(c);
    size_t i = hash & TABLE_MASK;
    while (slot_live(c, i))
        i = (i + 1) & TABLE_MASK;
    struct slot *s = &c->slots[i];
    memcpy(s->key, key, KEY_LEN);
    s->gen = c->gen;
    s->hash = hash;
    s->run = run;
    c->nflows++;
}

/* flows.pop(key, None). Backward-shift deletion: every key after the hole that could sit in
 * it moves up, so no probe chain is ever broken (no tombstones). */
static void flows_pop(Coalescer *c, const uint8_t *key, uint32_t hash)
{
    long found = flows_find(c, key, hash);
    if (found < 0)
        return;
    size_t hole = (size_t)found, j = hole;
    c->slots[hole].gen = c->gen - 1;
    c->nflows--;
    for (;;) {
        j = (j + 1) & TABLE_MASK;
        if (!slot_live(c, j))
            return;
        size_t home = c->slots[j].hash & TABLE_MASK;
        /* Stays when its home lies cyclically in (hole, j]. */
        int stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            c->slots[hole] = c->slots[j];
            c->slots[j].gen = c->gen - 1;
            hole = j;
        }
    }
}

/* ---- adding packets: Coalescer.add ---- */

static void out_pass(Coalescer *c, uint32_t pi) { c->out[c->nout++] = OUT_PASS | pi; }

/* _pass_flow */
static void pass_flow(Coalescer *c, const uint8_t *key, uint32_t pi)
{
    flows_pop(c, key, key_hash(key));
    out_pass(c, pi);
}

static void make_key(uint8_t *key, uint8_t kind, const uint8_t *from, size_t n)
{
    memset(key, 0, KEY_LEN);
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
            if (flags == ACK_PSH) {
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
    r->open = flags == ACK;
    r->psh = flags == ACK_PSH;
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

/* The data offset is valid, the flags are ACK or ACK|PSH and there is a payload. */
static int tcp_ok(unsigned off, unsigned flags, unsigned thl, unsigned hlen, size_t n)
{
    return thl >= 20 && hlen <= n && (flags == ACK || flags == ACK_PSH) && !(off & 0x0F) &&
           hlen != n;
}

/* One packet, as the body of the loop in Coalescer.add. */
static void add_packet(Coalescer *c, uint32_t pi)
{
    const struct packet *pk = &c->packets[pi];
    size_t n = pk->len;
    uint8_t h[HEAD_MAX], key[KEY_LEN], sig[SIG_LEN];
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

/* ---- frames: _finish ---- */

/* The frame of a run of several packets, at dst (its total bytes): the first packet's
 * headers adjusted, then every packet's payload. Runs without the GIL. */
static void fill_run(const Coalescer *c, const struct run *r, uint8_t *dst)
{
    const uint8_t *buf = c->view.buf;
    unsigned ihl = r->ihl, hlen = r->hlen, total = (unsigned)r->total, l4_len = total - ihl;
    const struct packet *pk = &c->packets[r->first];
    uint8_t *head = dst;
    uint64_t addrs;
    memcpy(head, buf + pk->offset, hlen);
    if (r->is_v4) {
        put16(head + 2, total);
        put16(head + 10, 0);
        put16(head + 10, ipv4_checksum(head, ihl));
        addrs = word_sum(head + 12, 8);
    } else {
        put16(head + 4, l4_len);
        addrs = word_sum(head + 8, 32);
    }
    unsigned proto, csum_offset;
    if (r->is_tcp) {
        if (r->psh)
            head[ihl + 13] |= TCP_PSH;
        proto = PROTO_TCP;
        csum_offset = 16;
    } else {
        put16(head + ihl + 4, l4_len);
        proto = PROTO_UDP;
        csum_offset = 6;
    }
    /* NEEDS_CSUM: the folded pseudo-header sum, not complemented; the kernel adds the rest. */
    put16(head + ihl + csum_offset, pseudo_sum(addrs, proto, l4_len));
    dst += hlen;
    for (uint32_t i = r->first; i != NO_PACKET; i = c->packets[i].next) {
        pk = &c->packets[i];
        memcpy(dst, buf + pk->offset + hlen, pk->len - hlen); /* every len >= hlen */
        dst += pk->len - hlen;
    }
}

/* The 10-byte virtio-net header of a run's frame (VirtioNetHeader.pack). */
static PyObject *run_header(const struct run *r)
{
    uint8_t v[VNET_HDR_LEN];
    v[0] = FLAG_NEEDS_CSUM;
    v[1] = r->is_tcp ? (r->is_v4 ? GSO_TCPV4 : GSO_TCPV6) : GSO_UDP_L4;
    put16le(v + 2, r->hlen);
    put16le(v + 4, r->seg_size);
    put16le(v + 6, r->ihl);
    put16le(v + 8, r->is_tcp ? 16 : 6);
    return PyBytes_FromStringAndSize((const char *)v, VNET_HDR_LEN);
}

/* The bytes out entry i turns into, and the packet it is when it is one packet alone. */
static size_t entry_size(const Coalescer *c, uint32_t entry, const struct packet **alone)
{
    if (entry & OUT_PASS) {
        *alone = &c->packets[entry & ~OUT_PASS];
        return (*alone)->len;
    }
    const struct run *r = &c->runs[entry];
    if (r->count == 1) {
        *alone = &c->packets[r->first];
        return (*alone)->len;
    }
    *alone = NULL;
    size_t size = r->hlen;
    for (uint32_t i = r->first; i != NO_PACKET; i = c->packets[i].next)
        size += c->packets[i].len - r->hlen;
    return size;
}

static void forget(Coalescer *c)
{
    c->npackets = c->nruns = c->nout = 0;
    flows_clear(c);
}

/* ---- the type ---- */

/* The rule for every method that reads or changes the state: claim() first, which marks the
 * coalescer busy at once, and release() on every way out. Nothing may come between the check
 * and the mark: an allocation can run the cyclic GC, hence a __del__ or (when it drops the
 * GIL) another thread, and a call from there would change what this one has already sized
 * (a run grown after frames() sized its body overflows it). */
static int claim(Coalescer *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Coalescer in use by another call");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static void release(Coalescer *self) { self->busy = 0; }

/* Room for `more` further packets, runs and out entries (one each at most per packet). */
static int reserve(Coalescer *c, size_t more)
{
    if (more > MAX_ITEMS - c->npackets) {
        PyErr_SetString(PyExc_ValueError, "too many packets gathered in one Coalescer");
        return -1;
    }
    size_t need = c->npackets + more;
    if (need <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 64;
    while (cap < need)
        cap = cap > MAX_ITEMS / 2 ? MAX_ITEMS : cap * 2;
    struct packet *packets = PyMem_Realloc(c->packets, cap * sizeof(struct packet));
    if (packets)
        c->packets = packets;
    struct run *runs = packets ? PyMem_Realloc(c->runs, cap * sizeof(struct run)) : NULL;
    if (runs)
        c->runs = runs;
    uint32_t *out = runs ? PyMem_Realloc(c->out, cap * sizeof(uint32_t)) : NULL;
    if (!out) {
        PyErr_NoMemory();
        return -1;
    }
    c->out = out;
    c->cap = cap;
    return 0;
}

static PyObject *Coalescer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "udp", "max_size", NULL};
    PyObject *buffer;
    int udp = 0;
    Py_ssize_t max_size = 65535;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$pn:Coalescer", kwlist, &buffer, &udp,
                                     &max_size))
        return NULL;
    if (max_size < 0 || max_size > 65535) {
        PyErr_Format(PyExc_ValueError, "max_size %zd out of range 0..65535", max_size);
        return NULL;
    }
    Coalescer *self = (Coalescer *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->udp = (char)(udp != 0);
    self->max_size = max_size;
    self->gen = 1;
    self->slots = PyMem_Calloc(TABLE_SLOTS, sizeof(struct slot));
    if (!self->slots) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Coalescer_dealloc(Coalescer *self)
{
    /* never busy here: a running call holds a reference */
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    PyMem_Free(self->packets);
    PyMem_Free(self->runs);
    PyMem_Free(self->out);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(add_records_doc,
"add_records(records, start, stop, denied=None) -> int\n\n"
"Add the packets buffer[offset:offset + length] of records start..stop-1, in order, as\n"
"gro.Coalescer.add adds packets. records holds little-endian uint32 triples (offset, length,\n"
"slot), record i at byte 12 * i. A record whose slot has denied[slot] != 0 (slot inside\n"
"denied) is skipped as if never seen; returns how many were. ValueError for a bad range or\n"
"a record outside the buffer, before anything changes. The GIL is released for the loop.");

static PyObject *Coalescer_add_records(Coalescer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"records", "start", "stop", "denied", NULL};
    Py_buffer records, denied = {0};
    Py_ssize_t start, stop;
    PyObject *denied_obj = Py_None, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*nn|O:add_records", kwlist, &records,
                                     &start, &stop, &denied_obj))
        return NULL;
    if (denied_obj != Py_None && PyObject_GetBuffer(denied_obj, &denied, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&records);
        return NULL;
    }
    Py_ssize_t nrecords = records.len / 12;
    if (claim(self) < 0)
        goto unclaimed;
    if (start < 0 || start > stop || stop > nrecords) {
        PyErr_Format(PyExc_ValueError, "records %zd..%zd outside 0..%zd", start, stop,
                     nrecords);
        goto done;
    }
    if (reserve(self, (size_t)(stop - start)) < 0)
        goto done;
    /* Read and check every record first, into the room past the packets held. */
    const uint8_t *rec = records.buf, *deny = denied.buf;
    size_t first = self->npackets, last = first, buflen = (size_t)self->view.len;
    Py_ssize_t skipped = 0;
    for (Py_ssize_t i = start; i < stop; i++) {
        const uint8_t *r = rec + 12 * i;
        uint32_t offset = le32(r), len = le32(r + 4), slot = le32(r + 8);
        if ((uint64_t)offset + len > buflen) {
            PyErr_Format(PyExc_ValueError, "record %zd (offset %u, length %u) beyond the "
                         "%zu-byte buffer", i, offset, len, buflen);
            goto done;
        }
        if (deny && slot < (size_t)denied.len && deny[slot]) {
            skipped++;
            continue;
        }
        self->packets[last++] = (struct packet){offset, len, NO_PACKET};
    }
    PyThreadState *ts = last - first >= GIL_MIN_PACKETS ? PyEval_SaveThread() : NULL;
    for (size_t i = first; i < last; i++)
        add_packet(self, (uint32_t)i);
    self->npackets = last;
    if (ts)
        PyEval_RestoreThread(ts);
    result = PyLong_FromSsize_t(skipped);
done:
    release(self);
unclaimed:
    if (denied.obj)
        PyBuffer_Release(&denied);
    PyBuffer_Release(&records);
    return result;
}

PyDoc_STRVAR(frames_doc,
"frames() -> list[tuple[bytes, bytes, int]]\n\n"
"(header, body, segments) of every frame gathered, in order, where header + body is what\n"
"gro.Coalescer's Coalesced.frame() would be; the coalescer is then empty again. The GIL is\n"
"released while the bodies are copied.");

static PyObject *Coalescer_frames(Coalescer *self, PyObject *Py_UNUSED(ignored))
{
    if (claim(self) < 0)
        return NULL;
    size_t n = self->nout, bytes = 0;
    PyObject *list = PyList_New((Py_ssize_t)n);
    uint8_t **dst = PyMem_Malloc((n ? n : 1) * sizeof(uint8_t *));
    if (!list || !dst) {
        Py_XDECREF(list);
        PyMem_Free(dst);
        release(self);
        return PyErr_NoMemory();
    }
    /* With the GIL: every object, bodies not yet filled (nothing else can see them). */
    for (size_t i = 0; i < n; i++) {
        uint32_t entry = self->out[i];
        const struct packet *alone;
        size_t size = entry_size(self, entry, &alone);
        PyObject *header = alone ? Py_NewRef(no_offload) : run_header(&self->runs[entry]);
        PyObject *body = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        PyObject *count = PyLong_FromUnsignedLong(alone ? 1 : self->runs[entry].count);
        PyObject *item = header && body && count ? PyTuple_Pack(3, header, body, count) : NULL;
        Py_XDECREF(header);
        Py_XDECREF(count);
        if (!item) {
            Py_XDECREF(body);
            Py_DECREF(list);
            PyMem_Free(dst);
            release(self);
            return NULL;
        }
        dst[i] = (uint8_t *)PyBytes_AS_STRING(body);
        Py_DECREF(body); /* the tuple holds it */
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        bytes += size;
    }
    PyThreadState *ts = bytes >= GIL_MIN_BYTES ? PyEval_SaveThread() : NULL;
    const uint8_t *buf = self->view.buf;
    for (size_t i = 0; i < n; i++) {
        uint32_t entry = self->out[i];
        const struct packet *alone;
        if (entry & OUT_PASS)
            alone = &self->packets[entry & ~OUT_PASS];
        else if (self->runs[entry].count == 1)
            alone = &self->packets[self->runs[entry].first];
        else
            alone = NULL;
        if (alone)
            memcpy(dst[i], buf + alone->offset, alone->len);
        else
            fill_run(self, &self->runs[entry], dst[i]);
    }
    forget(self);
    if (ts)
        PyEval_RestoreThread(ts);
    release(self);
    PyMem_Free(dst);
    return list;
}

static PyObject *Coalescer_clear(Coalescer *self, PyObject *Py_UNUSED(ignored))
{
    if (claim(self) < 0)
        return NULL;
    forget(self);
    release(self);
    Py_RETURN_NONE;
}

static PyMethodDef Coalescer_methods[] = {
    {"add_records", (PyCFunction)(void (*)(void))Coalescer_add_records,
     METH_VARARGS | METH_KEYWORDS, add_records_doc},
    {"frames", (PyCFunction)Coalescer_frames, METH_NOARGS, frames_doc},
    {"clear", (PyCFunction)Coalescer_clear, METH_NOARGS, "Forget everything gathered."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Coalescer_members[] = {
    {"udp", T_BOOL, offsetof(Coalescer, udp), READONLY, "UDP runs are kept too."},
    {"max_size", T_PYSSIZET, offsetof(Coalescer, max_size), READONLY,
     "The largest IP length of a coalesced frame."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CoalescerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vpn.core.offload._gro.Coalescer",
    .tp_basicsize = sizeof(Coalescer),
    .tp_dealloc = (destructor)Coalescer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Coalescer(buffer, *, udp=False, max_size=65535): GRO over packets laid out in "
              "buffer (held, read only, for the object's life), as gro.Coalescer.",
    .tp_methods = Coalescer_methods,
    .tp_members = Coalescer_members,
    .tp_new = Coalescer_new,
};

static struct PyModuleDef gro_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vpn.core.offload._gro",
    .m_doc = "Native GRO coalescing, the twin of vpn.core.offload.gro.Coalescer.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__gro(void)
{
    PyObject *os = PyImport_ImportModule("os");
    PyObject *seed = os ? PyObject_CallMethod(os, "urandom", "i", 8) : NULL;
    Py_XDECREF(os);
    if (!seed)
        return NULL;
    if (!PyBytes_Check(seed) || PyBytes_GET_SIZE(seed) != 8) {
        Py_DECREF(seed);
        PyErr_SetString(PyExc_ImportError, "os.urandom(8) gave no 8 bytes");
        return NULL;
    }
    memcpy(&hash_seed, PyBytes_AS_STRING(seed), 8);
    Py_DECREF(seed);
    if (!no_offload) {
        no_offload = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN);
        if (!no_offload)
            return NULL;
        memset(PyBytes_AS_STRING(no_offload), 0, VNET_HDR_LEN);
    }
    if (PyType_Ready(&CoalescerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&gro_module);
    if (!module)
        return NULL;
    if (PyModule_AddObjectRef(module, "Coalescer", (PyObject *)&CoalescerType) < 0
        || PyModule_AddIntConstant(module, "MAX_FLOWS", MAX_FLOWS) < 0
        || PyModule_AddIntConstant(module, "MAX_UDP_SEGMENTS", MAX_UDP_SEGMENTS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
