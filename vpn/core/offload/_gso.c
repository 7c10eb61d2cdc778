/* The native twin of vpn.core.offload.gso.split_python: cut one TSO/USO super-packet (or complete
 * the checksum of one NEEDS_CSUM packet) straight into a caller's buffer.
 *
 * The Python code in gso.py is the reference; this file must give byte-identical segments,
 * and for anything the reference rejects, the same OffloadError reason (checked in the same
 * order). Every checksum is written as 0xFFFF - (sum mod 0xFFFF), which is what the
 * reference computes: a sum congruent to 0 gives 0xFFFF, never 0.
 *
 * Layout in the output buffer: segment i starts at offset + gap + i * (gap + full + tail),
 * where full = header + gso_size is the length of every segment but the last. The gap (room
 * for a WireGuard transport header) and tail (padding and tag) bytes are left untouched.
 *
 * Safety: the packet's first bytes (at most every header) are copied once into a local
 * template and parsed from there, so every length used afterwards was checked once and the
 * payload is only ever read inside the lengths the template allowed, even if another thread
 * writes to the packet's buffer while the GIL is released. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "bytes.h"
#include "checksum.h"
#include "packet.h"

/* The largest IPv4 header (60) plus the largest TCP header (60): all any segment repeats. */
#define MAX_HEAD 120
/* gap and tail are bounded so that no layout arithmetic can overflow. */
#define MAX_ROOM 65535

/* The reasons, in the order of the table below; RSN_OK is no error. */
enum reason {
    RSN_OK, RSN_BAD_FLAGS, RSN_BAD_GSO_TYPE, RSN_UNSUPPORTED_GSO_TYPE, RSN_CSUM_OUT_OF_BOUNDS,
    RSN_HDR_LEN_TOO_BIG, RSN_BAD_GSO_SIZE, RSN_BAD_CSUM_OFFSET, RSN_MISSING_NEEDS_CSUM,
    RSN_TRUNCATED_IP, RSN_BAD_IP_HEADER_LEN, RSN_BAD_IP_LENGTH, RSN_IP_FRAGMENT, RSN_BAD_IP_VERSION,
    RSN_IP_VERSION_MISMATCH, RSN_IPV6_EXTENSION_HEADER, RSN_NOT_TCP, RSN_NOT_UDP, RSN_TRUNCATED_UDP,
    RSN_TRUNCATED_TCP, RSN_BAD_TCP_OFFSET, RSN_COUNT
};

static const char *const reason_names[RSN_COUNT] = {
    "", "bad_flags", "bad_gso_type", "unsupported_gso_type", "csum_out_of_bounds",
    "hdr_len_too_big", "bad_gso_size", "bad_csum_offset", "missing_needs_csum",
    "truncated_ip", "bad_ip_header_len", "bad_ip_length", "ip_fragment", "bad_ip_version",
    "ip_version_mismatch", "ipv6_extension_header", "not_tcp", "not_udp", "truncated_udp",
    "truncated_tcp", "bad_tcp_offset",
};

/* vpn.core.packet.errors.OffloadError, looked up once at import. */
static PyObject *offload_error;

struct vnet_hdr {
    unsigned flags, gso_type, hdr_len, gso_size, csum_start, csum_offset;
};

enum kind { PASS, CSUM, SEGMENT };

/* What one input turns into, decided before any byte is written. */
struct plan {
    enum kind kind;
    size_t len;           /* PASS/CSUM: the packet's length */
    size_t csum_start;    /* CSUM: where the sum starts, and where the field is */
    size_t csum_pos;
    int v4;               /* SEGMENT: */
    unsigned ihl, hl;     /* IP header length; IP + TCP/UDP header length */
    unsigned proto, mss;
    size_t payload;       /* total IP length - hl */
    size_t count;         /* segments */
    uint8_t head[MAX_HEAD];
};

/* The checks of vpn.core.packet.virtio.validate, in its order. */
static enum reason validate(const struct vnet_hdr *h, size_t n)
{
    unsigned base = h->gso_type & ~(unsigned)GSO_ECN;
    int needs_csum = h->flags & FLAG_NEEDS_CSUM;
    if (h->flags & ~(unsigned)(FLAG_NEEDS_CSUM | FLAG_DATA_VALID))
        return RSN_BAD_FLAGS;
    if (base != GSO_NONE && base != GSO_TCPV4 && base != GSO_UDP && base != GSO_TCPV6 &&
        base != GSO_UDP_L4)
        return RSN_BAD_GSO_TYPE;
    if ((h->gso_type & GSO_ECN) && base != GSO_TCPV4 && base != GSO_TCPV6)
        return RSN_BAD_GSO_TYPE;
    if (base == GSO_UDP)
        return RSN_UNSUPPORTED_GSO_TYPE;
    if (needs_csum && (size_t)h->csum_start + h->csum_offset + 2 > n)
        return RSN_CSUM_OUT_OF_BOUNDS;
    if (h->hdr_len > n)
        return RSN_HDR_LEN_TOO_BIG;
    if (base == GSO_NONE)
        return RSN_OK;
    if (h->gso_size == 0 || h->gso_size == 0xFFFF)
        return RSN_BAD_GSO_SIZE;
    if (base == GSO_TCPV4 || base == GSO_TCPV6) {
        if (needs_csum && h->csum_offset != TCP_CSUM_OFFSET)
            return RSN_BAD_CSUM_OFFSET;
    } else {
        if (!needs_csum)
            return RSN_MISSING_NEEDS_CSUM;
        if (h->csum_offset != UDP_CSUM_OFFSET)
            return RSN_BAD_CSUM_OFFSET;
    }
    return RSN_OK;
}

/* validate, then parse_ip, require_proto and tcp_header_len of vpn.core.packet.headers. */
static enum reason make_plan(const struct vnet_hdr *h, const uint8_t *pkt, size_t n,
                             struct plan *pl)
{
    enum reason r = validate(h, n);
    if (r != RSN_OK)
        return r;
    unsigned base = h->gso_type & ~(unsigned)GSO_ECN;
    if (base == GSO_NONE) {
        pl->kind = (h->flags & FLAG_NEEDS_CSUM) ? CSUM : PASS;
        pl->len = n;
        pl->csum_start = h->csum_start;
        pl->csum_pos = (size_t)h->csum_start + h->csum_offset;
        return RSN_OK;
    }
    const uint8_t *b = pl->head;
    size_t have = n < MAX_HEAD ? n : MAX_HEAD;
    memcpy(pl->head, pkt, have);
    memset(pl->head + have, 0, MAX_HEAD - have);

    unsigned version, ihl, proto;
    size_t total;
    if (n == 0)
        return RSN_TRUNCATED_IP;
    version = b[0] >> 4;
    if (version == 4) {
        if (n < 20)
            return RSN_TRUNCATED_IP;
        ihl = (b[0] & 0x0Fu) * 4;
        if (ihl < 20)
            return RSN_BAD_IP_HEADER_LEN;
        total = be16(b + 2);
        if (total < ihl)
            return RSN_BAD_IP_LENGTH;
        if (total > n)
            return RSN_TRUNCATED_IP;
        if (be16(b + 6) & 0x3FFF) /* MF or a fragment offset */
            return RSN_IP_FRAGMENT;
        proto = b[9];
    } else if (version == 6) {
        if (n < 40)
            return RSN_TRUNCATED_IP;
        size_t payload = be16(b + 4);
        if (payload == 0)
            return RSN_BAD_IP_LENGTH;
        total = 40 + payload;
        if (total > n)
            return RSN_TRUNCATED_IP;
        ihl = 40;
        proto = b[6];
    } else {
        return RSN_BAD_IP_VERSION;
    }
    unsigned want = base == GSO_TCPV6 ? 6 : base == GSO_TCPV4 ? 4 : version;
    if (version != want)
        return RSN_IP_VERSION_MISMATCH;

    unsigned need = base == GSO_UDP_L4 ? PROTO_UDP : PROTO_TCP;
    if (proto != need) {
        switch (version == 6 ? proto : 256) {
        case 0: case 43: case 44: case 50: case 51: case 60: case 135: case 139: case 140:
        case 253: case 254:
            return RSN_IPV6_EXTENSION_HEADER;
        default:
            return need == PROTO_UDP ? RSN_NOT_UDP : RSN_NOT_TCP;
        }
    }
    unsigned l4;
    if (need == PROTO_UDP) {
        if (total < (size_t)ihl + 8)
            return RSN_TRUNCATED_UDP;
        l4 = 8;
    } else {
        if (total < (size_t)ihl + 20)
            return RSN_TRUNCATED_TCP;
        l4 = (unsigned)(b[ihl + 12] >> 4) * 4; /* ihl + 12 < 20 + ihl <= total <= n */
        if (l4 < 20)
            return RSN_BAD_TCP_OFFSET;
        if ((size_t)ihl + l4 > total)
            return RSN_TRUNCATED_TCP;
    }
    /* ihl <= 60 and l4 <= 60, and both lie inside the packet: hl bytes are in head. */
    pl->kind = SEGMENT;
    pl->v4 = version == 4;
    pl->ihl = ihl;
    pl->hl = ihl + l4;
    pl->proto = proto;
    pl->mss = h->gso_size;
    pl->payload = total - pl->hl;
    pl->count = pl->payload ? (pl->payload + pl->mss - 1) / pl->mss : 1;
    return RSN_OK;
}

/* Bytes the layout takes from the first gap to the end of the last tail. */
static size_t plan_size(const struct plan *pl, size_t gap, size_t tail)
{
    if (pl->kind != SEGMENT)
        return gap + pl->len + tail;
    return pl->count * (gap + pl->hl + tail) + pl->payload;
}

/* The one packet with its checksum completed: sum from csum_start to the end with the field
 * as it is (it holds the pseudo-header sum), store the complement. */
static void write_csum(const struct plan *pl, const uint8_t *pkt, uint8_t *dst)
{
    memcpy(dst, pkt, pl->len);
    if (pl->kind == CSUM)
        put16(dst + pl->csum_pos, csum_finish(sum_be(dst + pl->csum_start,
                                                pl->len - pl->csum_start)));
}

/* Every segment, complete. Runs without the GIL. */
static void write_segments(const struct plan *pl, const uint8_t *pkt, uint8_t *out,
                           size_t gap, size_t tail)
{
    const uint8_t *head = pl->head;
    unsigned ihl = pl->ihl, hl = pl->hl, l4 = hl - ihl, mss = pl->mss;
    size_t stride = gap + hl + mss + tail;
    /* The pseudo-header's addresses; proto and length are added per segment. */
    uint64_t addrs = pl->v4 ? sum_be(head + 12, 8) : sum_be(head + 8, 32);
    unsigned ip_id = be16(head + 4);
    uint32_t seq = be32(head + ihl + 4);
    unsigned flags = head[ihl + 13];
    for (size_t i = 0; i < pl->count; i++) {
        uint8_t *seg = out + gap + i * stride;
        size_t done = i * mss;
        size_t plen = pl->payload - done < mss ? pl->payload - done : mss;
        unsigned seg_l4 = (unsigned)(l4 + plen);
        memcpy(seg, head, hl);
        memcpy(seg + hl, pkt + hl + done, plen);
        uint8_t *th = seg + ihl;
        if (pl->proto == PROTO_TCP) {
            uint32_t s = seq + (uint32_t)done; /* wraps modulo 2**32 */
            unsigned f = flags & ~(unsigned)(TCP_FIN | TCP_PSH | TCP_CWR);
            if (i == 0)
                f |= flags & TCP_CWR; /* the kernel keeps CWR on the first segment only */
            if (i == pl->count - 1)
                f |= flags & (TCP_FIN | TCP_PSH);
            put16(th + 4, s >> 16);
            put16(th + 6, s & 0xFFFF);
            th[13] = (uint8_t)f;
            put16(th + 16, 0);
            put16(th + 16, csum_finish(sum_be(th, seg_l4) + addrs + PROTO_TCP + seg_l4));
        } else {
            put16(th + 4, seg_l4);
            put16(th + 6, 0);
            put16(th + 6, csum_finish(sum_be(th, seg_l4) + addrs + PROTO_UDP + seg_l4));
        }
        if (pl->v4) {
            put16(seg + 2, ihl + seg_l4);
            put16(seg + 4, (ip_id + (unsigned)i) & 0xFFFF);
            put16(seg + 10, 0);
            put16(seg + 10, csum_finish(sum_be(seg, ihl)));
        } else {
            put16(seg + 4, seg_l4);
        }
    }
}

static int raise_reason(enum reason r)
{
    PyObject *exc = PyObject_CallFunction(offload_error, "s", reason_names[r]);
    if (exc) {
        PyErr_SetObject(offload_error, exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* Reads the packet from args[0] and the six header fields, then (if room) gap and tail,
 * from the arguments after it. */
static int parse_common(PyObject *const *args, int room, Py_buffer *packet,
                        struct vnet_hdr *h, size_t *gap, size_t *tail)
{
    static const Py_ssize_t limits[8] = {0xFF, 0xFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF,
                                         MAX_ROOM, MAX_ROOM};
    static const char *const names[8] = {"flags", "gso_type", "hdr_len", "gso_size",
                                         "csum_start", "csum_offset", "gap", "tail"};
    Py_ssize_t v[8] = {0};
    for (int i = 0; i < (room ? 8 : 6); i++) {
        v[i] = PyLong_AsSsize_t(args[i + 1]);
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
        if (v[i] < 0 || v[i] > limits[i]) {
            PyErr_Format(PyExc_ValueError, "%s %zd out of range 0..%zd", names[i], v[i],
                         limits[i]);
            return -1;
        }
    }
    *h = (struct vnet_hdr){(unsigned)v[0], (unsigned)v[1], (unsigned)v[2], (unsigned)v[3],
                           (unsigned)v[4], (unsigned)v[5]};
    *gap = (size_t)v[6];
    *tail = (size_t)v[7];
    return PyObject_GetBuffer(args[0], packet, PyBUF_SIMPLE);
}

/* How many segments, every one's length but the last, and the last's. */
static void plan_shape(const struct plan *pl, size_t *count, size_t *full, size_t *last)
{
    if (pl->kind != SEGMENT) {
        *count = 1;
        *full = *last = pl->len;
        return;
    }
    *count = pl->count;
    *full = pl->hl + (pl->count > 1 ? pl->mss : pl->payload);
    *last = pl->hl + pl->payload - (pl->count - 1) * pl->mss;
}

/* Writes what the plan says at dst (which has plan_size bytes), releasing the GIL. */
static void write_plan(const struct plan *pl, const uint8_t *pkt, uint8_t *dst, size_t gap,
                       size_t tail)
{
    Py_BEGIN_ALLOW_THREADS
    if (pl->kind == SEGMENT)
        write_segments(pl, pkt, dst, gap, tail);
    else
        write_csum(pl, pkt, dst + gap);
    Py_END_ALLOW_THREADS
}

PyDoc_STRVAR(size_doc,
"size(packet, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, gap, tail) -> int\n\n"
"Bytes that split_into needs for this packet with that gap and tail around each segment.\n"
"Raises OffloadError (with split_python's reason) for anything split_python rejects.");

/* The plan of the packet in args (with gap and tail from args when `with_room`), or -1
 * with the exception set (ValueError for a field out of range, OffloadError). */
static int plan_of(PyObject *const *args, int with_room, struct plan *pl, size_t *gap,
                   size_t *tail)
{
    Py_buffer packet;
    struct vnet_hdr h;
    if (parse_common(args, with_room, &packet, &h, gap, tail) < 0)
        return -1;
    enum reason r = make_plan(&h, packet.buf, (size_t)packet.len, pl);
    PyBuffer_Release(&packet);
    if (r != RSN_OK)
        return raise_reason(r), -1;
    return 0;
}

static PyObject *gso_size(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 9)
        return PyErr_Format(PyExc_TypeError, "size() takes 9 arguments (%zd given)", nargs);
    size_t gap, tail;
    struct plan pl;
    if (plan_of(args, 1, &pl, &gap, &tail) < 0)
        return NULL;
    return PyLong_FromSize_t(plan_size(&pl, gap, tail));
}

PyDoc_STRVAR(shape_doc,
"shape(packet, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) -> (count, full, last)\n\n"
"What split_into would return for this packet, without writing anything: how many\n"
"packets, every one's length but the last, and the last's. Raises OffloadError as size().");

static PyObject *gso_shape(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 7)
        return PyErr_Format(PyExc_TypeError, "shape() takes 7 arguments (%zd given)", nargs);
    size_t gap, tail, count, full, last;
    struct plan pl;
    if (plan_of(args, 0, &pl, &gap, &tail) < 0)
        return NULL;
    plan_shape(&pl, &count, &full, &last);
    return Py_BuildValue("nnn", (Py_ssize_t)count, (Py_ssize_t)full, (Py_ssize_t)last);
}

PyDoc_STRVAR(split_into_doc,
"split_into(out, offset, packet, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,\n"
"           gap, tail) -> (count, full, last)\n\n"
"Write the complete packets that packet stands for into the writable buffer out: segment i\n"
"at offset + gap + i * (gap + full + tail), each segment full bytes long but the last,\n"
"which is last bytes long. A plain packet (no GSO, no NEEDS_CSUM) is copied as is.\n"
"Raises OffloadError as size() does, ValueError if out is too small; either way before\n"
"anything is written. The GIL is released while the segments are written.");

static PyObject *gso_split_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 11)
        return PyErr_Format(PyExc_TypeError, "split_into() takes 11 arguments (%zd given)",
                            nargs);
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer out, packet;
    struct vnet_hdr h;
    size_t gap, tail;
    struct plan pl;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE) < 0)
        return NULL;
    if (parse_common(args + 2, 1, &packet, &h, &gap, &tail) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    PyObject *result = NULL;
    enum reason r = make_plan(&h, packet.buf, (size_t)packet.len, &pl);
    if (r != RSN_OK) {
        raise_reason(r);
    } else if (offset < 0 || offset > out.len ||
               plan_size(&pl, gap, tail) > (size_t)(out.len - offset)) {
        PyErr_Format(PyExc_ValueError, "out buffer too small: %zu bytes needed at offset %zd"
                     " of %zd", plan_size(&pl, gap, tail), offset, out.len);
    } else {
        size_t count, full, last;
        plan_shape(&pl, &count, &full, &last);
        write_plan(&pl, packet.buf, (uint8_t *)out.buf + offset, gap, tail);
        result = Py_BuildValue("nnn", (Py_ssize_t)count, (Py_ssize_t)full, (Py_ssize_t)last);
    }
    PyBuffer_Release(&packet);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(split_runs_doc,
"split_runs(out, offset, reads, gap, tail) -> list[(count, full, last)]\n\n"
"split_into for each (packet, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)\n"
"of `reads`, back to back from offset (read k's layout where read k - 1's last tail ends),\n"
"the GIL released once. OffloadError (the first rejected read's reason) or ValueError for\n"
"out too small, before anything is written.");

static PyObject *gso_split_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5)
        return PyErr_Format(PyExc_TypeError, "split_runs() takes 5 arguments (%zd given)",
                            nargs);
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t room[2];
    for (int i = 0; i < 2; i++)
        if ((room[i] = PyLong_AsSsize_t(args[3 + i])) < 0 || room[i] > MAX_ROOM)
            return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError,
                "%s %zd out of range 0..%d", i ? "tail" : "gap", room[i], MAX_ROOM);
    size_t gap = (size_t)room[0], tail = (size_t)room[1], need = 0;
    PyObject *result = NULL, *reads = PySequence_Fast(args[2], "split_runs: reads must be a "
                                                      "sequence");
    if (!reads)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(reads), got = 0;
    Py_buffer out;
    struct plan *plans = PyMem_Malloc((n ? (size_t)n : 1) * sizeof(struct plan));
    Py_buffer *packets = PyMem_Malloc((n ? (size_t)n : 1) * sizeof(Py_buffer));
    if (!plans || !packets) {
        PyErr_NoMemory();
        goto free;
    }
    if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE) < 0)
        goto free;
    for (; got < n; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(reads, got);
        struct vnet_hdr h;
        size_t unused[2];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 7) {
            PyErr_SetString(PyExc_TypeError, "split_runs: each read is a 7-tuple");
            goto done;
        }
        if (parse_common(PySequence_Fast_ITEMS(item), 0, &packets[got], &h, &unused[0],
                         &unused[1]) < 0)
            goto done;
        enum reason r = make_plan(&h, packets[got].buf, (size_t)packets[got].len,
                                  &plans[got]);
        if (r != RSN_OK) {
            PyBuffer_Release(&packets[got]);
            raise_reason(r);
            goto done;
        }
        need += plan_size(&plans[got], gap, tail); /* each < 2**34: no overflow */
    }
    if (offset < 0 || offset > out.len || need > (size_t)(out.len - offset)) {
        PyErr_Format(PyExc_ValueError, "out buffer too small: %zu bytes needed at offset %zd"
                     " of %zd", need, offset, out.len);
        goto done;
    }
    result = PyList_New(n);
    for (Py_ssize_t k = 0; result && k < n; k++) {
        size_t count, full, last;
        plan_shape(&plans[k], &count, &full, &last);
        PyObject *shape = Py_BuildValue("nnn", (Py_ssize_t)count, (Py_ssize_t)full,
                                        (Py_ssize_t)last);
        if (!shape)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, k, shape);
    }
    if (!result)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *dst = (uint8_t *)out.buf + offset;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (plans[k].kind == SEGMENT)
            write_segments(&plans[k], packets[k].buf, dst, gap, tail);
        else
            write_csum(&plans[k], packets[k].buf, dst + gap);
        dst += plan_size(&plans[k], gap, tail);
    }
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&packets[k]);
    PyBuffer_Release(&out);
free:
    PyMem_Free(plans);
    PyMem_Free(packets);
    Py_DECREF(reads);
    return result;
}

PyDoc_STRVAR(segments_doc,
"segments(packet, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) -> list\n\n"
"What split_python returns, in one call: the packet itself when there is nothing to do, else\n"
"memoryviews of one new bytearray that holds the complete packets side by side.\n"
"Raises OffloadError as size() does.");

static PyObject *gso_segments(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 7)
        return PyErr_Format(PyExc_TypeError, "segments() takes 7 arguments (%zd given)",
                            nargs);
    Py_buffer packet;
    struct vnet_hdr h;
    size_t gap, tail, count, full, last;
    struct plan pl;
    if (parse_common(args, 0, &packet, &h, &gap, &tail) < 0)
        return NULL;
    PyObject *buf = NULL, *view = NULL, *list = NULL;
    enum reason r = make_plan(&h, packet.buf, (size_t)packet.len, &pl);
    if (r != RSN_OK) {
        raise_reason(r);
        goto done;
    }
    if (pl.kind == PASS) { /* as split_python: the packet itself, no copy */
        list = PyList_New(1);
        if (list)
            PyList_SET_ITEM(list, 0, Py_NewRef(args[0]));
        goto done;
    }
    /* Not zero-filled: every byte is written (no gap, no tail). */
    buf = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)plan_size(&pl, 0, 0));
    if (!buf)
        goto done;
    write_plan(&pl, packet.buf, (uint8_t *)PyByteArray_AS_STRING(buf), 0, 0);
    plan_shape(&pl, &count, &full, &last);
    view = PyMemoryView_FromObject(buf);
    list = view ? PyList_New((Py_ssize_t)count) : NULL;
    for (size_t i = 0; list && i < count; i++) {
        Py_ssize_t start = (Py_ssize_t)(i * full);
        PyObject *seg = PySequence_GetSlice(view, start,
                                            start + (Py_ssize_t)(i + 1 < count ? full : last));
        if (!seg)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, seg);
    }
done:
    Py_XDECREF(view);
    Py_XDECREF(buf);
    PyBuffer_Release(&packet);
    return list;
}

static PyMethodDef methods[] = {
    {"segments", (PyCFunction)(void (*)(void))gso_segments, METH_FASTCALL, segments_doc},
    {"shape", (PyCFunction)(void (*)(void))gso_shape, METH_FASTCALL, shape_doc},
    {"size", (PyCFunction)(void (*)(void))gso_size, METH_FASTCALL, size_doc},
    {"split_into", (PyCFunction)(void (*)(void))gso_split_into, METH_FASTCALL,
     split_into_doc},
    {"split_runs", (PyCFunction)(void (*)(void))gso_split_runs, METH_FASTCALL,
     split_runs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vpn.core.offload._gso",
    "Native GSO segmentation, the twin of vpn.core.offload.gso.split_python.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gso(void)
{
    PyObject *errors = PyImport_ImportModule("vpn.core.packet.errors");
    if (!errors)
        return NULL;
    offload_error = PyObject_GetAttrString(errors, "OffloadError");
    Py_DECREF(errors);
    if (!offload_error)
        return NULL;
    return PyModule_Create(&module);
}
