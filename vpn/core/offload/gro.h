/* What the pieces of the _gro module share (see _gro.c): its limits, its state and the
 * functions each piece offers the others. Include it first. */
#ifndef VPN_GRO_H
#define VPN_GRO_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "bytes.h"
#include "packet.h"


/* gro.py's MAX_FLOWS and MAX_UDP_SEGMENTS (a test checks they agree). */
#define MAX_FLOWS 1024
#define MAX_UDP_SEGMENTS 64

/* The most of a packet any rule reads: an IPv6 header and the largest TCP header. */
#define HEAD_MAX 100
/* A flow key: its kind, then the addresses and ports (12 bytes for IPv4, 36 for IPv6), zero
 * padded so keys compare as fixed-size blobs. */
#define FLOW_KEY_LEN 40
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
    uint8_t key[FLOW_KEY_LEN];
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

/* gro_flows.c: the flow table, the reference's dict `flows` (keys to run indices). */
extern uint64_t hash_seed;
uint32_t key_hash(const uint8_t *key);
void flows_clear(Coalescer *c);
long flows_find(const Coalescer *c, const uint8_t *key, uint32_t hash);
void flows_set(Coalescer *c, long found, const uint8_t *key, uint32_t hash, uint32_t run);
void flows_pop(Coalescer *c, const uint8_t *key, uint32_t hash);

/* gro_add.c: Coalescer.add for one packet already recorded in c->packets. */
void add_packet(Coalescer *c, uint32_t pi);

/* gro_frames.c: _finish, a frame's size, body and virtio-net header. */
size_t entry_size(const Coalescer *c, uint32_t entry, const struct packet **alone);
void fill_run(const Coalescer *c, const struct run *r, uint8_t *dst);
PyObject *run_header(const struct run *r);

#endif
