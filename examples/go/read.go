// The read side: what a tunnel must do with every read from a TUN opened with
// IFF_VNET_HDR and TUNSETOFFLOAD. Strip the header, finish the checksum when the read
// carries NEEDS_CSUM, and cut a GSO super-packet into the segments it stands for, each
// with its own IP and TCP header and checksums, as the kernel's tcp_gso_segment() would.
//
//	sudo ip netns exec b ./tunjumbo -read -addr 198.18.4.1/24 -pcap /tmp/read.pcap -count 10
//
// Every packet it makes goes to the pcap file (link type RAW: bare IP packets), so that
// `tcpdump -r /tmp/read.pcap -vv` checks each checksum.

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

const (
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the super-packet has CWR set
	tcpFlagF = 0x01 // FIN
	tcpFlagP = 0x08 // PSH
	tcpFlagC = 0x80 // CWR
)

// vnetHdr is struct virtio_net_hdr, fields in host byte order.
type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func parseVnetHdr(b []byte) vnetHdr {
	return vnetHdr{b[0], b[1], host.Uint16(b[2:]), host.Uint16(b[4:]), host.Uint16(b[6:]),
		host.Uint16(b[8:])}
}

// ipHeader is what the reader needs from an IPv4 or IPv6 header.
type ipHeader struct {
	version, hdrLen int
	proto           byte // IPv6: the next header; extension headers are not followed
	src, dst        net.IP
}

func parseIP(pkt []byte) (ipHeader, error) {
	switch {
	case len(pkt) >= ipv4HdrLen && pkt[0]>>4 == 4:
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < ipv4HdrLen || ihl > len(pkt) {
			return ipHeader{}, fmt.Errorf("IPv4 header length %d", ihl)
		}
		return ipHeader{4, ihl, pkt[9], net.IP(pkt[12:16]), net.IP(pkt[16:20])}, nil
	case len(pkt) >= ipv6HdrLen && pkt[0]>>4 == 6:
		return ipHeader{6, ipv6HdrLen, pkt[6], net.IP(pkt[8:24]), net.IP(pkt[24:40])}, nil
	case len(pkt) == 0:
		return ipHeader{}, errors.New("empty packet")
	}
	return ipHeader{}, fmt.Errorf("not IP (version %d)", pkt[0]>>4)
}

// completeChecksum finishes a NEEDS_CSUM checksum: the field holds the pseudo-header sum,
// so the sum of everything from csum_start to the end, field included, is the checksum.
func completeChecksum(h vnetHdr, pkt []byte) error {
	start, at := int(h.csumStart), int(h.csumStart)+int(h.csumOffset)
	if at+2 > len(pkt) {
		return fmt.Errorf("checksum at %d+%d, outside the %d-byte packet", start,
			h.csumOffset, len(pkt))
	}
	c := ^fold(sum(pkt[start:], 0))
	if c == 0 && h.csumOffset == 6 { // UDP: 0 means "no checksum", send 0xFFFF
		c = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[at:], c)
	return nil
}

// packetsOf turns one read, header stripped, into the packets it stands for.
func packetsOf(h vnetHdr, pkt []byte) ([][]byte, error) {
	switch h.gsoType &^ gsoECN {
	case gsoNone:
		if h.flags&needsCsum != 0 {
			if err := completeChecksum(h, pkt); err != nil {
				return nil, err
			}
		}
		return [][]byte{pkt}, nil
	case gsoTCPv4, gsoTCPv6:
		return splitTCP(h, pkt)
	}
	return nil, fmt.Errorf("gso_type %d not asked for (TUNSETOFFLOAD)", h.gsoType)
}

// splitTCP cuts a TCP super-packet into gso_size payloads. Each segment gets the headers
// of the super-packet with: the sequence number advanced by the payload before it; for
// IPv4 the ID plus the segment's index, its own total length and header checksum; for
// IPv6 its own payload length; FIN and PSH only on the last segment, CWR only on the
// first; and a complete TCP checksum. The header lengths come from the packet (IHL and
// the TCP data offset), not from hdr_len, which is only a hint on forwarded packets.
func splitTCP(h vnetHdr, pkt []byte) ([][]byte, error) {
	ip, err := parseIP(pkt)
	if err != nil {
		return nil, err
	}
	want := map[uint8]int{gsoTCPv4: 4, gsoTCPv6: 6}[h.gsoType&^gsoECN]
	switch {
	case ip.version != want:
		return nil, fmt.Errorf("gso_type %d on an IPv%d packet", h.gsoType, ip.version)
	case ip.proto != syscall.IPPROTO_TCP || int(h.csumStart) != ip.hdrLen:
		return nil, fmt.Errorf("TCP GSO with protocol %d, csum_start %d", ip.proto, h.csumStart)
	case h.gsoSize == 0:
		return nil, errors.New("TCP GSO with gso_size 0")
	case len(pkt) < ip.hdrLen+tcpHdrLen:
		return nil, errors.New("TCP header cut short")
	}
	tcpOff := ip.hdrLen
	hdrLen := tcpOff + int(pkt[tcpOff+12]>>4)*4
	if hdrLen < tcpOff+tcpHdrLen || hdrLen > len(pkt) {
		return nil, fmt.Errorf("TCP data offset %d", pkt[tcpOff+12]>>4)
	}
	payload, size := pkt[hdrLen:], int(h.gsoSize)
	seq := binary.BigEndian.Uint32(pkt[tcpOff+4:])
	var segments [][]byte
	for off := 0; off < len(payload); off += size {
		end := off + size
		if end > len(payload) {
			end = len(payload)
		}
		seg := append(append(make([]byte, 0, hdrLen+end-off), pkt[:hdrLen]...),
			payload[off:end]...)
		if ip.version == 4 {
			binary.BigEndian.PutUint16(seg[2:], uint16(len(seg)))
			id := binary.BigEndian.Uint16(pkt[4:]) + uint16(len(segments))
			binary.BigEndian.PutUint16(seg[4:], id)
			binary.BigEndian.PutUint16(seg[10:], 0)
			binary.BigEndian.PutUint16(seg[10:], ^fold(sum(seg[:ip.hdrLen], 0)))
		} else {
			binary.BigEndian.PutUint16(seg[4:], uint16(len(seg)-ipv6HdrLen))
		}
		tcp := seg[tcpOff:]
		binary.BigEndian.PutUint32(tcp[4:], seq+uint32(off))
		if end < len(payload) {
			tcp[13] &^= tcpFlagF | tcpFlagP
		}
		if off > 0 {
			tcp[13] &^= tcpFlagC
		}
		binary.BigEndian.PutUint16(tcp[tcpCsumOff:], 0)
		binary.BigEndian.PutUint16(tcp[tcpCsumOff:],
			^fold(sum(tcp, pseudoHeader(ip.src, ip.dst, len(tcp)))))
		segments = append(segments, seg)
	}
	return segments, nil
}

// runReader opens the TUN with the offloads given and turns every read into packets
// until it has made `count` TCP packets (0: until nothing arrives for `idle`).
func runReader(name, addr, pcapPath string, count int, idle time.Duration, offload uint) error {
	tun, err := openTUN(name, uintptr(offload))
	if err != nil {
		return err
	}
	defer tun.Close()
	if err := setUp(name, addr); err != nil {
		return err
	}
	out := &pcapWriter{}
	if pcapPath != "" {
		f, err := os.Create(pcapPath)
		if err != nil {
			return err
		}
		defer f.Close()
		if out, err = newPcapWriter(f); err != nil {
			return err
		}
	}
	fmt.Printf("%s open: IFF_VNET_HDR, header size %d, TUNSETOFFLOAD %#x; reading\n", name,
		vnetHdrLen, offload)
	buf := make([]byte, vnetHdrLen+65535) // a shorter buffer truncates reads silently
	made := 0
	for count == 0 || made < count {
		if err := tun.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return err
		}
		n, err := tun.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		} else if err != nil {
			return fmt.Errorf("read: %w", err)
		} else if n < vnetHdrLen {
			continue
		}
		h, pkt := parseVnetHdr(buf), buf[vnetHdrLen:n]
		fmt.Printf("read: flags=%d gso_type=%d hdr_len=%d gso_size=%d csum_start=%d "+
			"csum_offset=%d | %d bytes", h.flags, h.gsoType, h.hdrLen, h.gsoSize, h.csumStart,
			h.csumOffset, len(pkt))
		packets, err := packetsOf(h, pkt)
		if err != nil {
			fmt.Printf(": %v, dropped\n", err)
			continue
		}
		ip, _ := parseIP(packets[0])
		fmt.Printf(" -> %d packet(s), IPv%d %s > %s proto %d\n", len(packets), ip.version,
			ip.src, ip.dst, ip.proto)
		for _, p := range packets {
			if err := out.write(p); err != nil {
				return err
			}
			if ip.proto == syscall.IPPROTO_TCP {
				made++
			}
		}
	}
	fmt.Printf("made %d TCP packets from what %s delivered\n", made, name)
	if count != 0 && made < count {
		return fmt.Errorf("only %d of %d TCP packets arrived", made, count)
	}
	return nil
}

// pcapWriter writes the classic pcap format with link type RAW (101): each record is a
// bare IPv4 or IPv6 packet. Without a file it writes nothing.
type pcapWriter struct{ f *os.File }

func newPcapWriter(f *os.File) (*pcapWriter, error) {
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4) // magic: microsecond timestamps
	binary.LittleEndian.PutUint16(hdr[4:], 2)          // version 2.4
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535) // snaplen
	binary.LittleEndian.PutUint32(hdr[20:], 101)   // LINKTYPE_RAW
	_, err := f.Write(hdr)
	return &pcapWriter{f}, err
}

func (w *pcapWriter) write(p []byte) error {
	if w.f == nil {
		return nil
	}
	now := time.Now()
	rec := make([]byte, 16, 16+len(p))
	binary.LittleEndian.PutUint32(rec[0:], uint32(now.Unix()))
	binary.LittleEndian.PutUint32(rec[4:], uint32(now.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(rec[8:], uint32(len(p)))
	binary.LittleEndian.PutUint32(rec[12:], uint32(len(p)))
	_, err := w.f.Write(append(rec, p...))
	return err
}
