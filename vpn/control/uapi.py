"""The cross-platform userspace API (what `wg` speaks over IFACE.sock), as pure functions.

Parses `set=1` requests into a validated ChangeSet, formats `get=1` answers from a snapshot, and
reads both back for our own client (`vpn show`); no sockets, no clock, no endpoint state.

The protocol (https://www.wireguard.com/xplatform/): a request is one operation line (`get=1` or
`set=1`), `key=value` lines for a set, and an empty line; the answer is `key=value` lines ending
with `errno=N` and an empty line. Keys travel as 64 lowercase hex digits. Errors are reported as
negative errno values, as wireguard-go does: `wg` sets errno to minus the number, so `-22` makes
it print "Invalid argument".

Project-specific operations that `wg` never sends:

``get=vpn-stats``
    the endpoint's offload and drop counters as flat ``dotted.name=value`` lines.
``set=vpn-down``
    stop the endpoint (answered with ``errno=0`` before it goes).
``set=vpn-reload``
    re-read the config file and apply the difference as `wg syncconf` would; a refusal
    carries an ``error=`` line (the file:line:key reason) before its ``errno=``.

Each is one line followed by the empty line.
"""

from __future__ import annotations

import errno
import ipaddress
import re
from collections.abc import Iterable, Mapping
from socket import AF_INET as _AF_INET
from socket import AF_INET6 as _AF_INET6
from socket import inet_ntop as _ntop
from socket import inet_pton as _pton

from vpn.core.keys import KeyFormatError, from_hex, to_hex
from vpn.core.types import Address, Network, endpoint_text
from vpn.core.wireguard.allowedips import Prefix
from vpn.core.wireguard.changes import (
    ChangeSet,
    DeviceSnapshot,
    PeerChange,
    PeerRow,
)
from vpn.core.wireguard.changes import PeerSnapshot as PeerSnapshot  # for the clients' use

# wireguard-go's codes (ipc.IpcError*): negative errno values.
EINVAL = -errno.EINVAL  # bad key, bad value, unknown key
EADDRINUSE = -errno.EADDRINUSE  # listen_port taken
EPROTO = -errno.EPROTO  # malformed request: not key=value, not text, over a limit
EIO = -errno.EIO  # the endpoint failed to do something valid
ENOANO = -55  # wireguard-go's "unknown" (its IpcErrorUnknown)

OP_GET = "get=1"
OP_SET = "set=1"
OP_STATS = "get=vpn-stats"
OP_DOWN = "set=vpn-down"
OP_RELOAD = "set=vpn-reload"

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
_DIGITS = re.compile(r"[0-9]{1,10}")
_INTEGER = re.compile(r"-?[0-9]+")
# What a UAPI key name looks like. Only such a name is quoted in an error: the text before a
# line's first '=' may be a pasted key (base64 ends with '='), and no value is ever quoted.
_KEY_NAME = re.compile(r"[a-z_]{1,32}")
# A stats key: dotted words only, so a counter name can never break a line or contain '='.
_STAT_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class UapiError(ValueError):
    """A request that cannot be applied; `code` is the (negative) errno sent back.

    The message names the key and the problem, never the value: the server logs it, and a
    value may be a key written on the wrong line.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- set: request -> ChangeSet --------------------------------------------------------------






def key_name(text: str) -> str:
    """`text` quoted if it looks like a key name; otherwise a placeholder, as it may be a key."""
    return repr(text) if _KEY_NAME.fullmatch(text) else "(not shown: it may be a key)"


def _key(name: str, value: str) -> bytes:
    try:
        return from_hex(value)
    except KeyFormatError:
        raise UapiError(EINVAL, f"{name}: not 64 lowercase hex digits") from None


def _number(name: str, value: str, high: int) -> int:
    # A regex rather than int(): int() takes '+5', ' 5', '1_0' and non-ASCII digits.
    if not _DIGITS.fullmatch(value) or int(value) > high:
        raise UapiError(EINVAL, f"{name}: not a number from 0 to {high}")
    return int(value)


def _true(name: str, value: str) -> bool:
    # wireguard-go accepts only "true" for these flags; "false" is an error there too.
    if value != "true":
        raise UapiError(EINVAL, f"{name}: only 'true' is accepted")
    return True


def parse_endpoint(value: str) -> Address:
    """`a.b.c.d:port` or `[v6]:port`, IP literals only (wg resolves names before sending)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            sep = ""  # an IPv6 address without brackets is ambiguous
    if not sep:
        raise UapiError(EINVAL, "endpoint: not ip:port or [ipv6]:port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UapiError(EINVAL, "endpoint: the host is not an IP address") from None
    port_number = _number("endpoint port", port, MAX_U16)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # the socket layer reports IPv4 peers plainly
    return str(address), port_number


def parse_allowed_ip(value: str) -> Network:
    """`address/length`; host bits are cleared, as every implementation's trie does."""
    if "/" not in value:
        raise UapiError(EINVAL, "allowed_ip: no /prefix-length")
    address, _, length = value.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UapiError(EINVAL, "allowed_ip: the address is not an IP address") from None
    bits = _number("allowed_ip prefix length", length, ip.max_prefixlen)
    # (int, bits): with the address object itself, the network would format it and parse
    # the text again, a third of the time a 130,000-prefix request takes.
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv4Network((int(ip), bits), strict=False)
    return ipaddress.IPv6Network((int(ip), bits), strict=False)


def parse_set(lines: Iterable[str]) -> ChangeSet:
    """The `key=value` lines after `set=1` (without the empty line) as a ChangeSet.

    Checks every line before returning, so a bad line anywhere means nothing is applied.
    Raises UapiError naming the request line (`set=1` is line 1), since the value is not shown.
    """
    parser = SetParser()
    for line in lines:
        parser.feed(line)
    return parser.result()


class SetParser:
    """`parse_set` one line at a time, for a request read as it streams in: memory follows
    the parsed ChangeSet, never the request's text (a peer may have 100,000s of allowed IPs).

    After the first bad line the rest is only counted, so the server can read the request to
    its end and answer with that line's error; nothing parsed so far is kept.
    """

    __slots__ = ("_changes", "_error", "_number", "_peer")

    def __init__(self) -> None:
        self._changes = ChangeSet()
        self._peer: PeerChange | None = None
        self._number = 1  # `set=1` is line 1
        self._error: UapiError | None = None

    def feed(self, line: str) -> None:
        self._number += 1
        if self._error is not None:
            return
        key, equals, value = line.partition("=")
        try:
            if not equals:
                raise UapiError(EINVAL, "expected key=value")
            if key == "public_key":
                self._peer = PeerChange(_key(key, value))
                self._changes.peers.append(self._peer)
            elif self._peer is None:
                _device_key(self._changes, key, value)
            else:
                _peer_key(self._peer, key, value)
        except UapiError as err:
            self._error = UapiError(err.code, f"line {self._number}: {err}")
            self._changes, self._peer = ChangeSet(), None

    def result(self) -> ChangeSet:
        """The whole request's changes; UapiError for its first bad line."""
        if self._error is not None:
            raise self._error
        return self._changes


def _device_key(changes: ChangeSet, key: str, value: str) -> None:
    if key == "private_key":
        changes.private_key = _key(key, value)
    elif key == "listen_port":
        changes.listen_port = _number(key, value, MAX_U16)
    elif key == "fwmark":
        changes.fwmark = _number(key, value, MAX_U32)
    elif key == "replace_peers":
        changes.replace_peers = _true(key, value)
    else:
        raise UapiError(EINVAL, f"unknown device key {key_name(key)}")


def _peer_key(peer: PeerChange, key: str, value: str) -> None:
    if key == "remove":
        peer.remove = _true(key, value)
    elif key == "update_only":
        peer.update_only = _true(key, value)
    elif key == "preshared_key":
        peer.preshared_key = _key(key, value)
    elif key == "endpoint":
        peer.endpoint = parse_endpoint(value)
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _number(key, value, MAX_U16)
    elif key == "replace_allowed_ips":
        peer.replace_allowed_ips = _true(key, value)
        peer.allowed_ips.clear()  # lines before it are replaced too, as wireguard-go does
    elif key == "allowed_ip":
        peer.allowed_ips.append(parse_allowed_ip(value))
    elif key == "protocol_version":
        if value != "1":
            raise UapiError(EINVAL, "protocol_version: only 1 is supported")
    else:
        raise UapiError(EINVAL, f"unknown peer key {key_name(key)}")


# -- get: snapshot -> answer ----------------------------------------------------------------







_NO_KEY = bytes(32).hex()
ANSWER_END = "errno=0\n\n"  # a get answer's last line and the empty line after it


def prefix_text(prefix: Prefix) -> str:
    """`address/length` exactly as str() of its ipaddress network object (what `wg` has
    always been sent), at a tenth of the cost. inet_ntop writes RFC 5952 text as ipaddress
    does, except in ::/80, where glibc writes IPv4-embedded forms (::ffff:1.2.3.4)."""
    version, length, value = prefix
    if version == 4:
        return f"{_ntop(_AF_INET, value.to_bytes(4, 'big'))}/{length}"
    if value >> 48:
        return f"{_ntop(_AF_INET6, value.to_bytes(16, 'big'))}/{length}"
    return f"{ipaddress.IPv6Address(value)}/{length}"


def parse_prefix(text: str) -> Prefix:
    """`prefix_text` read back; ValueError unless it is an address, a length that fits it
    and no host bits (as ipaddress.ip_network's strict parse)."""
    address, _, length = text.partition("/")
    family = _AF_INET6 if ":" in address else _AF_INET
    try:
        raw = _pton(family, address)
    except OSError:
        raise ValueError("not an IP address") from None
    bits = len(raw) * 8
    if not _DIGITS.fullmatch(length) or int(length) > bits:
        raise ValueError("not a prefix length")
    value = int.from_bytes(raw, "big")
    if value & ((1 << (bits - int(length))) - 1):
        raise ValueError("host bits set")
    return (4 if bits == 32 else 6), int(length), value


def format_get(snapshot: DeviceSnapshot) -> str:
    """The whole `get=1` answer, `errno=0` and the closing empty line included."""
    return format_head(snapshot) + format_peers(snapshot.rows, {}, {}) + ANSWER_END


# public key -> (keepalive, prefixes, public_key line, keepalive and allowed_ip lines)
PeerTextLines = tuple[int, tuple[Prefix, ...], str, str]


class PeerTexts:
    """Each peer's lines of a get answer that change only with its configuration (public
    key, keepalive, allowed IPs), kept from one get to the next by the formatter: formatting
    the allowed IPs was most of a get's time. Found by public key and checked against the
    values they show, so a changed peer is formatted anew and nothing shown is stale. The
    preshared key's line is never kept: a str outlives the key it shows, which is zeroed
    when its peer goes."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: dict[bytes, PeerTextLines] = {}


def format_head(snapshot: DeviceSnapshot) -> str:
    """A get answer's interface lines."""
    head = []
    if snapshot.private_key is not None:
        head.append(f"private_key={to_hex(snapshot.private_key)}\n")
    if snapshot.listen_port:
        head.append(f"listen_port={snapshot.listen_port}\n")
    if snapshot.fwmark:
        head.append(f"fwmark={snapshot.fwmark}\n")
    return "".join(head)


def format_peers(rows: Iterable[PeerRow], kept: dict[bytes, PeerTextLines],
                 fresh: dict[bytes, PeerTextLines]) -> str:
    """Peers' lines of a get answer, any slice of them at a time (the answer is the head,
    every slice's text in order, and ANSWER_END); their static lines from `kept` (a
    PeerTexts') where they still show the peers' values, and into `fresh` either way (the
    PeerTexts' next `kept`, once the answer is complete)."""
    return "".join([_peer_text(row, kept, fresh) for row in rows])


def _peer_text(peer: PeerRow, kept: dict[bytes, PeerTextLines],
               fresh: dict[bytes, PeerTextLines]) -> str:
    """One peer's lines of a get answer, each ending in a newline; its static lines from
    `kept` when they still show its values, and into `fresh` either way."""
    public_key, psk, endpoint, last, tx_bytes, rx_bytes, keepalive, prefixes = peer
    static = kept.get(public_key)
    if static is None or static[0] != keepalive or (
            static[1] is not prefixes and static[1] != prefixes):
        allowed = "".join([f"allowed_ip={prefix_text(p)}\n" for p in sorted(prefixes)])
        static = (keepalive, prefixes, f"public_key={public_key.hex()}\n",
                  f"persistent_keepalive_interval={keepalive}\n{allowed}")
    fresh[public_key] = static
    # Split before scaling: seconds * 1e9 would spend the float's precision on the seconds.
    when = last or 0.0
    seconds = int(when)
    nanos = min(round((when - seconds) * 1e9), 999_999_999) if seconds else 0
    where = f"endpoint={endpoint_text(endpoint)}\n" if endpoint is not None else ""
    return (f"{static[2]}preshared_key={psk.hex() if psk else _NO_KEY}\n"
            f"protocol_version=1\n{where}last_handshake_time_sec={seconds}\n"
            f"last_handshake_time_nsec={nanos}\ntx_bytes={tx_bytes}\nrx_bytes={rx_bytes}\n"
            f"{static[3]}")


def format_errno(code: int) -> str:
    return f"errno={code}\n\n"


def format_refusal(code: int, reason: str) -> str:
    """A refusal that says why, on one line: for our own operations only (`wg` reads a
    bare errno= answer)."""
    return f"error={' '.join(reason.split())}\n" + format_errno(code)


def parse_get(lines: Iterable[str]) -> DeviceSnapshot:
    """Our client's side: a `get=1` answer (its lines, errno included) as a snapshot.

    Raises UapiError with the endpoint's code when the answer is an error.
    """
    device = DeviceSnapshot(private_key=None, listen_port=0)
    reader = _PeerReader(device)
    for number, line in enumerate(lines, start=1):
        key, _, value = line.partition("=")
        if key == "errno":
            _check_errno(value)
            reader.finish()
            return device
        try:
            reader.line(key, value)
        except ValueError:
            # int()'s and ipaddress's messages quote the value: on a private_key line, the key.
            raise UapiError(EPROTO, f"answer line {number}: {key_name(key)}: malformed value"
                            ) from None
    raise UapiError(EPROTO, "the answer ended without errno")


def _check_errno(value: str) -> None:
    """An answer's closing `errno=` value: UapiError unless it is 0."""
    if not _INTEGER.fullmatch(value):
        raise UapiError(EPROTO, "errno: not a number")
    if code := int(value):
        raise UapiError(code, f"the endpoint answered errno={code}")


class _PeerReader:
    """A get answer's lines applied to `device` one by one; the current peer's values are
    kept here until the next peer (or errno=) ends it as a row."""

    __slots__ = ("device", "endpoint", "keepalive", "last", "prefixes", "psk", "public_key",
                 "rx_bytes", "tx_bytes")

    def __init__(self, device: DeviceSnapshot) -> None:
        self.device = device
        self.public_key: bytes | None = None
        self.start(None)

    def start(self, public_key: bytes | None) -> None:
        self.public_key = public_key
        self.psk: bytes | None = None
        self.endpoint: Address | None = None
        self.last: float | None = None
        self.tx_bytes = self.rx_bytes = self.keepalive = 0
        self.prefixes: list[Prefix] = []

    def finish(self) -> None:
        if self.public_key is not None:
            self.device.rows.append((self.public_key, self.psk, self.endpoint, self.last,
                                     self.tx_bytes, self.rx_bytes, self.keepalive,
                                     tuple(self.prefixes)))
        self.start(None)

    def line(self, key: str, value: str) -> None:
        if key == "public_key":
            self.finish()
            self.start(from_hex(value))
        elif self.public_key is None:
            device = self.device
            if key == "private_key":
                device.private_key = from_hex(value)
            elif key == "listen_port":
                device.listen_port = int(value)
            elif key == "fwmark":
                device.fwmark = int(value)
        elif key == "allowed_ip":
            self.prefixes.append(parse_prefix(value))
        elif key == "preshared_key":
            psk = from_hex(value)
            self.psk = psk if any(psk) else None
        elif key == "endpoint":
            self.endpoint = parse_endpoint(value)
        elif key == "last_handshake_time_sec":
            self.last = (self.last or 0) + int(value)
        elif key == "last_handshake_time_nsec":
            self.last = (self.last or 0) + int(value) / 1e9
        elif key == "tx_bytes":
            self.tx_bytes = int(value)
        elif key == "rx_bytes":
            self.rx_bytes = int(value)
        elif key == "persistent_keepalive_interval":
            self.keepalive = int(value)


# -- vpn-stats: nested counters <-> flat lines ----------------------------------------------


def format_stats(stats: Mapping[str, object]) -> str:
    """Nested dicts of numbers and strings as `a.b.c=value` lines, then errno=0."""
    out: list[str] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif value is not None:
            text = str(value).replace("\n", " ")  # a value never spans lines
            if _STAT_KEY.fullmatch(prefix):
                out.append(f"{prefix}={text}")

    walk("", stats)
    out.append("errno=0")
    return "\n".join(out) + "\n\n"


def parse_stats(lines: Iterable[str]) -> dict[str, object]:
    """`format_stats` read back: nested dicts, integers where the value is one."""
    root: dict[str, object] = {}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "errno":
            _check_errno(value)
            return root
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[leaf] = int(value) if _INTEGER.fullmatch(value) else value
    raise UapiError(EPROTO, "the answer ended without errno")
