"""The offload relay with one classic virtio-net header mistake built in, to show its symptom.

Run as `python -m lab.mistake_relay MISTAKE NS_A NS_B [relay options]`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from lab import relay
from vpn.core.offload import Coalesced
from vpn.core.packet.checksum import checksum, pseudo_header_sum
from vpn.core.packet.virtio import NO_OFFLOAD, VirtioNetHeader

MISTAKES = ("no-strip", "gso-size-mtu", "hdr-len-without-options", "full-checksum")


class NoStrip(relay.Direction):
    """Reads with IFF_VNET_HDR but hands header and packet on as if all of it were IP."""

    def pump(self) -> None:
        for header, packet in self.src.read_batch():
            self.stats.reads += 1
            self.write(NO_OFFLOAD, (header.pack(), packet))


class JumboMistake(relay.Direction):
    """Writes jumbo frames with one field of the virtio header or the packet done wrong."""

    mistake = ""

    def write_frame(self, frame: Coalesced) -> None:
        header = VirtioNetHeader.unpack(frame.header)
        if header.gso_type:
            frame = self.mistaken(header, frame)
        super().write_frame(frame)

    def mistaken(self, header: VirtioNetHeader, frame: Coalesced) -> Coalesced:
        ip_tcp = bytearray(frame.parts[0])
        ihl = header.csum_start
        if self.mistake == "gso-size-mtu":
            # Full segments are exactly MTU long: headers plus the MSS.
            header = dataclasses.replace(header, gso_size=header.hdr_len + header.gso_size)
        elif self.mistake == "hdr-len-without-options":
            header = dataclasses.replace(header, hdr_len=ihl + 20)
        elif self.mistake == "full-checksum":
            whole = b"".join(frame.parts)
            v4 = whole[0] >> 4 == 4
            src, dst = (whole[12:16], whole[16:20]) if v4 else (whole[8:24], whole[24:40])
            tcp = bytearray(whole[ihl:])
            tcp[16:18] = b"\0\0"
            full = checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp)))
            ip_tcp[ihl + 16 : ihl + 18] = full.to_bytes(2, "big")
        return Coalesced(header.pack(), [bytes(ip_tcp), *frame.parts[1:]], frame.segments)


def main(argv: Sequence[str]) -> int:
    mistake, rest = argv[0], list(argv[1:])
    if mistake == "no-strip":
        return relay.main([*rest, "--mode", "passthrough"], NoStrip)
    direction = type(f"Mistake_{mistake}", (JumboMistake,), {"mistake": mistake})
    return relay.main(rest, direction)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
