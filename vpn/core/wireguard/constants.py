"""WireGuard protocol constants under the whitepaper's names.

Every other module of vpn.core.wireguard takes its numbers and strings from here.
"""

from typing import Final

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

# Key and field sizes.
KEY_LEN: Final = 32
HASH_LEN: Final = 32
MAC_LEN: Final = 16
AEAD_TAG_LEN: Final = 16
TIMESTAMP_LEN: Final = 12
COOKIE_LEN: Final = 16
COOKIE_NONCE_LEN: Final = 24

# Message types (a little-endian u32: one type byte, three zero bytes).
MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

# Message sizes.
INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TRANSPORT_MIN_SIZE: Final = TRANSPORT_HEADER_SIZE + AEAD_TAG_LEN  # a keepalive
PADDING_MULTIPLE: Final = 16

# Limits on a session.
REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1

# Timers, in seconds.
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
REKEY_TIMEOUT_JITTER_MAX: Final = 1 / 3  # up to 333 ms added to each retransmission
KEEPALIVE_TIMEOUT: Final = 10.0
COOKIE_REFRESH_TIME: Final = 120.0
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18

# Handshake flood limits.
MAX_HANDSHAKE_RATE: Final = 50  # initiations consumed per second per peer
INITIATION_MIN_INTERVAL: Final = 1 / MAX_HANDSHAKE_RATE
RATELIMIT_PACKETS_PER_SECOND: Final = 20  # per source address, under load
RATELIMIT_BURST: Final = 5
RATELIMIT_MAX_ENTRIES: Final = 8192
RATELIMIT_GC_INTERVAL: Final = 1.0
# Handshake messages that passed the cheap checks wait for their Diffie-Hellman work in a
# queue of this many (wireguard-go's); past it they are dropped (handshake_queue_full).
HANDSHAKE_QUEUE_SIZE: Final = 1024
# Under load (cookies demanded): while the queue holds 1/UNDER_LOAD_FRACTION of its size or
# more (the kernel's and wireguard-go's rule), then for UNDER_LOAD_TIME more.
UNDER_LOAD_FRACTION: Final = 8
UNDER_LOAD_TIME: Final = 1.0
# A transport message for no session we know starts a handshake (the lost-session
# rehandshake) at most once in this many seconds, whoever sends such messages.
LOST_SESSION_INTERVAL: Final = 1.0

# Replay window: 128 words of 64 bits, one word kept as slack for the sliding edge.
REPLAY_WORD_BITS: Final = 64
REPLAY_RING_WORDS: Final = 128
REPLAY_WINDOW: Final = (REPLAY_RING_WORDS - 1) * REPLAY_WORD_BITS  # 8128

# TAI64N label for 1970-01-01 (2**62 + the 10 s TAI-UTC offset WireGuard uses).
TAI64_BASE: Final = 0x400000000000000A
# Initiation timestamps are rounded down to this many ns so they leak less timing.
TIMESTAMP_WHITENER_NS: Final = 1 << 24

# Bound on the device's receiver-index table: a handshake and three keypairs per peer.
INDEXES_PER_PEER: Final = 4
