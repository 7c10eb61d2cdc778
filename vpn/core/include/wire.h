/* The WireGuard wire facts every native module shares: one source for the C side, checked
 * against the Python constants (vpn/core/wireguard/constants.py, messages.py, keypair.RECORD
 * and the drop-reason tuples) by tests/unit/core/test_wire_header.py, which parses the
 * #defines and enums below. Each name here is the Python name. */
#ifndef VPN_WIRE_H
#define VPN_WIRE_H

#include <stdint.h>

/* constants.py: message types, sizes and the AEAD's numbers. */
#define MESSAGE_INITIATION 1u
#define MESSAGE_RESPONSE 2u
#define MESSAGE_COOKIE_REPLY 3u
#define MESSAGE_TRANSPORT 4u
#define INITIATION_SIZE 148
#define RESPONSE_SIZE 92
#define COOKIE_REPLY_SIZE 64
#define TRANSPORT_HEADER_SIZE 16
#define AEAD_TAG_LEN 16
#define TRANSPORT_MIN_SIZE (TRANSPORT_HEADER_SIZE + AEAD_TAG_LEN) /* a keepalive */
#define PADDING_MULTIPLE 16
#define KEY_LEN 32
#define HASH_LEN 32 /* the mac1 key is HASH("mac1----" || public key) */
#define MAC_LEN 16
#define REPLAY_WINDOW 8128u
#define REJECT_AFTER_MESSAGES (UINT64_MAX - 8192u) /* 2**64 - 2**13 - 1 */

/* messages.TRANSPORT_HEADER ("<IIQ"): byte offsets of its fields, little-endian. */
#define TRANSPORT_TYPE_AT 0      /* uint32: the type, then three reserved zero bytes */
#define TRANSPORT_RECEIVER_AT 4  /* uint32: the receiver's index */
#define TRANSPORT_COUNTER_AT 8   /* uint64: the nonce counter */

/* keypair.RECORD ("<III"): one good packet of receive_run, read by the GRO coalescer. */
#define RECORD_SIZE 12
#define RECORD_OFFSET_AT 0  /* uint32: where its plaintext starts in `out` */
#define RECORD_LENGTH_AT 4  /* uint32: its IP length */
#define RECORD_SLOT_AT 8    /* uint32: its inner source's slot */
#define MAX_SOURCES 64      /* keypair.MAX_SOURCES: distinct sources per receive_run */

/* keypair.OPENED ("<QIIIII"): one authenticated message of open_run, for accept_run. */
#define OPENED_SIZE 28
#define OPENED_COUNTER_AT 0  /* uint64: its counter, for the replay window */
#define OPENED_BYTES_AT 8    /* uint32: its size on the wire */
#define OPENED_OFFSET_AT 12  /* uint32: where its plaintext starts in `out` */
#define OPENED_LENGTH_AT 16  /* uint32: its IP length (a packet) */
#define OPENED_STATUS_AT 20  /* uint32: what it holds, enum opened_status */
#define OPENED_SLOT_AT 24    /* uint32: its inner source's slot (a packet) */

/* replay.REPLAY_SLOTS: the window's ring of one-byte slots (replay.h). */
#define REPLAY_SLOTS 8192

/* The order each native call reports its drop counts in; the names after the prefix are
 * the Python reason strings of the tuple named. The last member is the count. */
/* keypair._NATIVE_DROP_REASONS: TransportKey.open_batch */
enum open_drop {
    OPEN_TRANSPORT_TOO_SHORT, OPEN_WRONG_KEYPAIR, OPEN_BAD_AUTH, OPEN_REPLAY, OPEN_REASONS
};
/* keypair._RUN_DROP_REASONS: TransportKey.open_run */
enum run_drop {
    RUN_WRONG_KEYPAIR, RUN_BAD_AUTH, RUN_REPLAY, RUN_INNER_NOT_IP, RUN_DISHONEST_PACKET_SIZE,
    RUN_REASONS
};
/* keypair.OPENED_STATUS: what an opened message holds; accept_run records a packet and
 * counts the two drops (under those reasons) once the message is fresh. */
enum opened_status {
    OPENED_PACKET, OPENED_KEEPALIVE, OPENED_INNER_NOT_IP, OPENED_DISHONEST_PACKET_SIZE,
    OPENED_STATUSES
};
/* screen.SCREEN_REASONS: the receive screen (vpn/core/wireguard/_screen.c). The first six
 * are the handshake path's (Device.drops), the last the data path's. */
enum screen_drop {
    SCREEN_TOO_SHORT, SCREEN_TRANSPORT_TOO_SHORT, SCREEN_UNKNOWN_TYPE, SCREEN_BAD_LENGTH,
    SCREEN_RESERVED_NONZERO, SCREEN_BAD_MAC1, SCREEN_UNKNOWN_RECEIVER_INDEX, SCREEN_REASONS
};

#endif
