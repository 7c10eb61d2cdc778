"""The classic virtio-net header mistakes, each shown against the real kernel with its symptom.

Each test runs the relay with one mistake built in (lab/mistake_relay.py) and
checks the failure a user would see; docs/tun-offload.md points here.
"""

from __future__ import annotations

import pytest

from lab.netns import Lab
from lab.relay_lab import B4, LAN4, checked_transfer, gateway, host_to_host

pytestmark = pytest.mark.netns


def test_not_stripping_the_header_on_read_breaks_every_connection(lab: Lab) -> None:
    """Mistake 1: the IP parser gets the 10 header bytes first; nothing gets through."""
    run = host_to_host(lab, mistake="no-strip")
    capture = run.a.capture("relay0", "tcp")
    ping = run.a.run("ping", "-c", "2", "-W", "1", B4, check=False)
    with pytest.raises(RuntimeError):
        checked_transfer(run.a, run.b, B4, 1 << 20, seconds=3)
    decoded = capture.stop()
    run.stop()
    assert ping.returncode != 0
    # The SYN leaves and is repeated; no SYN-ACK ever comes back.
    assert decoded.count("Flags [S]") >= 2, decoded
    assert "Flags [S.]" not in decoded


def completed(received: str, size: int) -> bool:
    """Did the receiver get all `size` bytes? When the sender gives up, its close may still
    reach the receiver, which then reports the few bytes it got (seen under load)."""
    return bool(received) and int(received.split()[0]) == size


def test_gso_size_set_to_the_mtu_makes_the_gateway_drop_every_jumbo_frame(lab: Lab) -> None:
    """Mistake 3: gso_size is the MSS. With the MTU there, the segments would be 40 bytes
    too big for a 1500-byte link, so the gateway drops each whole jumbo frame and answers
    "fragmentation needed", and the transfer crawls on retransmitted single segments."""
    run, lan = gateway(lab, mtu=1500, lan_mtu=1500, mistake="gso-size-mtu")
    before = _icmp_frag_needed_sent(run.b)
    _, received = checked_transfer(run.a, lan, LAN4, 64 << 20, seconds=4)
    stats = run.stop()
    assert stats["a_to_b"]["jumbo_frames"] > 0
    assert _icmp_frag_needed_sent(run.b) > before
    assert not completed(received, 64 << 20)


def test_full_checksum_with_needs_csum_corrupts_forwarded_segments(lab: Lab) -> None:
    """Mistake 4: with NEEDS_CSUM the field must hold the pseudo-header partial sum. A full
    checksum there is summed again by whoever completes it: the gateway's resegmented
    packets arrive with wrong checksums and the receiver drops them."""
    run, lan = gateway(lab, mistake="full-checksum")
    capture = lan.capture("to-b", "tcp", snaplen=1600, inbound_only=True)
    _, received = checked_transfer(run.a, lan, LAN4, 64 << 20, seconds=4)
    decoded = capture.stop()
    stats = run.stop()
    assert stats["a_to_b"]["jumbo_frames"] > 0
    assert "incorrect" in decoded
    assert not completed(received, 64 << 20)


def test_hdr_len_without_tcp_options_is_tolerated_on_write(lab: Lab) -> None:
    """Mistake 3b: hdr_len must cover the TCP options. On write, this kernel recomputes the
    header length from the packet itself, so a short hdr_len does no harm here; the danger
    is on read, where a forwarded packet's hdr_len is not to be trusted (see
    tests/unit/core/test_gso.py, which splits using the TCP data offset instead)."""
    run = host_to_host(lab, mistake="hdr-len-without-options")
    sent, received = checked_transfer(run.a, run.b, B4, 8 << 20)
    stats = run.stop()
    assert stats["a_to_b"]["jumbo_frames"] > 0
    assert sent == received


def _icmp_frag_needed_sent(host) -> int:
    out = host.run("nstat", "-az", "IcmpMsgOutType3").stdout.split()
    return int(out[out.index("IcmpMsgOutType3") + 1]) if "IcmpMsgOutType3" in out else 0

