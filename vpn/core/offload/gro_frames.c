/* The frames of _gro.c (gro.py's _finish): a run's body with its first packet's headers
 * adjusted and checksummed, and its virtio-net header. */
#include "gro.h"

#include "checksum.h"

/* The frame of a run of several packets, at dst (its total bytes): the first packet's
 * headers adjusted, then every packet's payload. Runs without the GIL. */
void fill_run(const Coalescer *c, const struct run *r, uint8_t *dst)
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
        csum_offset = TCP_CSUM_OFFSET;
    } else {
        put16(head + ihl + 4, l4_len);
        proto = PROTO_UDP;
        csum_offset = UDP_CSUM_OFFSET;
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
PyObject *run_header(const struct run *r)
{
    uint8_t v[VIRTIO_NET_HDR_LEN];
    v[0] = FLAG_NEEDS_CSUM;
    v[1] = r->is_tcp ? (r->is_v4 ? GSO_TCPV4 : GSO_TCPV6) : GSO_UDP_L4;
    store16(v + 2, r->hlen);
    store16(v + 4, r->seg_size);
    store16(v + 6, r->ihl);
    store16(v + 8, r->is_tcp ? TCP_CSUM_OFFSET : UDP_CSUM_OFFSET);
    return PyBytes_FromStringAndSize((const char *)v, VIRTIO_NET_HDR_LEN);
}

/* The bytes out entry i turns into, and the packet it is when it is one packet alone. */
size_t entry_size(const Coalescer *c, uint32_t entry, const struct packet **alone)
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
