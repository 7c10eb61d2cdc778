"""Types of _handshake.c (the handshake's X25519, AEADs and KDF over OpenSSL libcrypto, and
the Noise steps with Diffie-Hellmans; the references are crypto_reference.py and noise.py's Python
path). Functions take their arguments by position only; wrong lengths raise ValueError."""

from collections.abc import Sequence
from typing import final

from _typeshed import ReadableBuffer

class KeyWiped(Exception):
    """An exchange with a wiped X25519Key."""

@final
class X25519Key:
    """A 32-byte X25519 private key made into OpenSSL's key once, its public half computed
    once."""
    def __new__(cls, private: ReadableBuffer) -> X25519Key: ...
    @property
    def public(self) -> bytes:
        """The 32-byte public key."""
    def exchange(self, peer: ReadableBuffer, /) -> bytes | None:
        """X25519 with a peer's public key: the shared secret, None when it is all zero (a
        low-order point); KeyWiped once wiped."""
    def wipe(self) -> None:
        """Free the key (OpenSSL cleanses it) once no exchange uses it. Idempotent."""

@final
class PeerTable:
    """The peers respond_known looks up by static key: entries of (public key, ss or None,
    psk), each one's slot its position; immutable, its secrets wiped when freed. A key given
    twice raises ValueError."""
    def __new__(cls, entries: Sequence[tuple[ReadableBuffer, ReadableBuffer | None,
                                             ReadableBuffer]]) -> PeerTable: ...
    def __len__(self) -> int: ...

def seal(key: ReadableBuffer, nonce: ReadableBuffer, plaintext: ReadableBuffer,
         ad: ReadableBuffer, /) -> bytes:
    """ChaCha20-Poly1305, a 12-byte nonce: the ciphertext and its 16-byte tag."""
def open(key: ReadableBuffer, nonce: ReadableBuffer, ciphertext: ReadableBuffer,
         ad: ReadableBuffer, /) -> bytes | None:
    """ChaCha20-Poly1305, a 12-byte nonce: the plaintext, None when it does not authenticate."""
def xseal(key: ReadableBuffer, nonce: ReadableBuffer, plaintext: ReadableBuffer,
          ad: ReadableBuffer, /) -> bytes:
    """XChaCha20-Poly1305, a 24-byte nonce: the ciphertext and its 16-byte tag."""
def xopen(key: ReadableBuffer, nonce: ReadableBuffer, ciphertext: ReadableBuffer,
          ad: ReadableBuffer, /) -> bytes | None:
    """XChaCha20-Poly1305, a 24-byte nonce: the plaintext, None when it does not authenticate."""
def hchacha20(key: ReadableBuffer, nonce: ReadableBuffer, /) -> bytes:
    """HChaCha20 of a 32-byte key and a 16-byte nonce."""
def kdf(key: ReadableBuffer, data: ReadableBuffer, outputs: int, /) -> tuple[bytes, ...]:
    """WireGuard's KDF (HMAC-BLAKE2s): its first `outputs` (1 to 3) 32-byte keys; any other
    count raises ValueError."""
def respond_known(static: X25519Key, table: PeerTable, chaining_key: ReadableBuffer,
                  hash: ReadableBuffer, ephemeral: ReadableBuffer,
                  sealed_static: ReadableBuffer, sealed_timestamp: ReadableBuffer,
                  ephemeral_private: ReadableBuffer | None, /
                  ) -> tuple[int, tuple[bytes, ...]] | int:
    """The responder's step over an initiation's fields, the peer found in `table`, the GIL
    released once: the peer's slot and (remote_static, timestamp, chaining key, hash after
    the initiation, the new ephemeral's public key, the empty AEAD, transport key 1,
    transport key 2, final hash), or 1 (a low-order point), 2 (the static key does not
    open), 3 (the timestamp does not open), 5 (no peer has the static key) or 6 (the peer
    has no ss: a low-order key). `ephemeral_private` None: drawn from OpenSSL's RAND."""
def consume_response(static: X25519Key, ephemeral: X25519Key, chaining_key: ReadableBuffer,
                     hash: ReadableBuffer, psk: ReadableBuffer,
                     remote_ephemeral: ReadableBuffer, sealed_nothing: ReadableBuffer,
                     /) -> tuple[bytes, ...] | int:
    """The initiator's consume of a response, from the chaining key and hash after its
    initiation: (transport key 1, transport key 2, final hash), or 1 (a low-order point), 4
    (the empty AEAD does not open)."""
