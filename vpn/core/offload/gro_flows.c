/* The flow table of _gro.c: the reference's dict `flows` (get, set, pop, clear), keys to run
 * indices, as open addressing with linear probing and a keyed hash. */
#include "gro.h"

/* Keyed per process (os.urandom at import) so crafted addresses and ports cannot pile up on
 * one probe chain; the MAX_FLOWS bound caps the worst case anyway. */
uint64_t hash_seed;

uint32_t key_hash(const uint8_t *key)
{
    uint64_t h = hash_seed;
    for (int i = 0; i < FLOW_KEY_LEN; i += 8) {
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

static int slot_live(const Coalescer *c, size_t i) { return c->slots[i].gen == c->gen; }

/* flows.clear(): a new generation makes every slot dead at once. */
void flows_clear(Coalescer *c)
{
    c->nflows = 0;
    if (++c->gen == 0) { /* wrapped: old generations could come back to life */
        memset(c->slots, 0, sizeof(struct slot) * TABLE_SLOTS);
        c->gen = 1;
    }
}

/* The slot holding key, or -1. Ends: at most MAX_FLOWS of the slots are live. */
long flows_find(const Coalescer *c, const uint8_t *key, uint32_t hash)
{
    for (size_t i = hash & TABLE_MASK;; i = (i + 1) & TABLE_MASK) {
        if (!slot_live(c, i))
            return -1;
        if (c->slots[i].hash == hash && !memcmp(c->slots[i].key, key, FLOW_KEY_LEN))
            return (long)i;
    }
}

/* flows[key] = run, with the MAX_FLOWS rule; found is flows_find's answer for key. */
void flows_set(Coalescer *c, long found, const uint8_t *key, uint32_t hash,
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
    memcpy(s->key, key, FLOW_KEY_LEN);
    s->gen = c->gen;
    s->hash = hash;
    s->run = run;
    c->nflows++;
}

/* flows.pop(key, None). Backward-shift deletion: every key after the hole that could sit in
 * it moves up, so no probe chain is ever broken (no tombstones). */
void flows_pop(Coalescer *c, const uint8_t *key, uint32_t hash)
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
