// Command tunjumbo opens a TUN device with IFF_VNET_HDR, writes ONE jumbo TCP frame
// into it with a correct virtio-net header, and reads what comes back, stripping the
// header from every read. The kernel cuts the frame into MSS-sized segments wherever it
// leaves on a link without TSO, and fills in every checksum.
//
// With -read it is the other side instead (read.go): it reads super-packets from the
// TUN, strips the header, completes NEEDS_CSUM checksums and splits GSO super-packets
// into segments itself, and writes what it made to a pcap file.
//
// Standard library only (syscall, os, os/exec, encoding/binary, flag, fmt, net, time,
// unsafe); it runs `ip` (iproute2) to give the TUN its address. Run it as root, in a
// network namespace that forwards to a 1500-byte link (examples/README.md sets one up):
//
//	go build -o tunjumbo . && sudo ip netns exec gw ./tunjumbo
//
// Builds with Go 1.19 (Debian bookworm's golang-go) and later.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// From <linux/if_tun.h> and <linux/virtio_net.h>; syscall has the ioctl numbers.
const (
	iffTun      = 0x0001
	iffNoPi     = 0x1000
	iffVnetHdr  = 0x4000
	tunFCsum    = 0x01 // reads may carry NEEDS_CSUM: "I finish checksums myself"
	tunFTso4    = 0x02 // reads may be TCP/IPv4 super-packets: "I split them myself"
	tunFTso6    = 0x04 // the same for TCP/IPv6
	vnetHdrLen  = 10   // sizeof(struct virtio_net_hdr); TUNSETVNETHDRSZ below says so
	needsCsum   = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM
	gsoNone     = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4    = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6    = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	ipv4HdrLen  = 20
	ipv6HdrLen  = 40
	tcpHdrLen   = 20 // no options; with options, hdr_len grows and gso_size shrinks
	tcpCsumOff  = 16 // offset of the checksum field in the TCP header
	lastPayload = 700
)

// The header is in host byte order: little-endian on x86 and arm64. (Go 1.21 has
// binary.NativeEndian; TUNSETVNETLE makes it little-endian everywhere.)
var host = binary.LittleEndian

func main() {
	name := flag.String("name", "tun0", "TUN device to create")
	addr := flag.String("addr", "198.18.3.1/24", "address of the TUN (routes the /24 into it)")
	src := flag.String("src", "198.18.3.2", "source of the frame: a host behind the TUN")
	dst := flag.String("dst", "198.18.2.2", "destination of the frame, beyond the 1500-byte link")
	mss := flag.Int("mss", 0, "payload bytes per segment (0: 1500 - IP header - 20, "+
		"1460 for IPv4, 1440 for IPv6)")
	segments := flag.Int("segments", 10, "segments' worth of payload in the frame")
	wait := flag.Duration("wait", 5*time.Second, "how long to wait for each RST coming back")
	read := flag.Bool("read", false, "be the reader instead (read.go): split what arrives")
	pcap := flag.String("pcap", "", "-read: write the packets it made to this pcap file")
	count := flag.Int("count", 0, "-read: stop after this many TCP packets (0: when idle)")
	idle := flag.Duration("idle", 10*time.Second, "-read: stop after this long without a read")
	offload := flag.Uint("offload", tunFCsum|tunFTso4|tunFTso6, "-read: TUNSETOFFLOAD flags")
	flag.Parse()
	var err error
	if *read {
		err = runReader(*name, *addr, *pcap, *count, *idle, *offload)
	} else {
		err = run(*name, *addr, *src, *dst, *mss, *segments, *wait)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tunjumbo:", err)
		os.Exit(1)
	}
}

// ipVersion returns 4 or 6 for the pair of addresses, and the addresses in the form
// that goes into the packet (4 or 16 bytes).
func ipVersion(srcText, dstText string) (int, net.IP, net.IP, error) {
	src, dst := net.ParseIP(srcText), net.ParseIP(dstText)
	switch {
	case src == nil || dst == nil:
	case src.To4() != nil && dst.To4() != nil:
		return 4, src.To4(), dst.To4(), nil
	case src.To4() == nil && dst.To4() == nil:
		return 6, src, dst, nil
	}
	return 0, nil, nil, errors.New("-src and -dst must be two IPv4 or two IPv6 addresses")
}

// setUp gives the TUN its address and brings it up (nodad: an IPv6 address would
// otherwise stay tentative for a second or more).
func setUp(name, addr string) error {
	add := []string{"addr", "add", addr, "dev", name}
	if strings.Contains(addr, ":") {
		add = append(add, "nodad")
	}
	for _, args := range [][]string{add, {"link", "set", name, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	return nil
}

func run(name, addr, srcText, dstText string, mss, segments int, wait time.Duration) error {
	version, src, dst, err := ipVersion(srcText, dstText)
	if err != nil {
		return err
	}
	if mss == 0 { // what fits a 1500-byte link: the IPv6 header is 20 bytes longer
		mss = map[int]int{4: 1500 - ipv4HdrLen - tcpHdrLen, 6: 1500 - ipv6HdrLen - tcpHdrLen}[version]
	}
	tun, err := openTUN(name, tunFCsum|tunFTso4)
	if err != nil {
		return err
	}
	defer tun.Close() // a non-persistent TUN disappears with its last descriptor
	if err := setUp(name, addr); err != nil {
		return err
	}
	fmt.Printf("%s open: IFF_VNET_HDR, header size %d, TUNSETOFFLOAD TUN_F_CSUM|TUN_F_TSO4\n",
		name, vnetHdrLen)

	payload := mss*(segments-1) + lastPayload
	frame := tcpFrame(src, dst, payload)
	ipHdrLen, gsoType := ipv4HdrLen, byte(gsoTCPv4)
	if version == 6 {
		ipHdrLen, gsoType = ipv6HdrLen, gsoTCPv6
	}
	ipLen := uint16(ipHdrLen)
	hdr := make([]byte, vnetHdrLen)
	hdr[0] = needsCsum                       // flags: the kernel completes the TCP checksum
	hdr[1] = gsoType                         // gso_type: a TCP/IPv4 (IPv6) super-packet
	host.PutUint16(hdr[2:], ipLen+tcpHdrLen) // hdr_len: IP + TCP headers with options
	host.PutUint16(hdr[4:], uint16(mss))     // gso_size: payload per segment, NOT the MTU
	host.PutUint16(hdr[6:], ipLen)           // csum_start: where the TCP header begins
	host.PutUint16(hdr[8:], tcpCsumOff)      // csum_offset: the checksum within it
	if _, err := tun.Write(append(hdr, frame...)); err != nil {
		return fmt.Errorf("write: %w", err) // EINVAL: the header does not describe the frame
	}
	fmt.Printf("wrote one %d-byte IPv%d frame (%d x %d + %d bytes of payload): flags=%d "+
		"gso_type=%d hdr_len=%d gso_size=%d csum_start=%d csum_offset=%d\n",
		len(frame), version, segments-1, mss, lastPayload, hdr[0], hdr[1], host.Uint16(hdr[2:]),
		host.Uint16(hdr[4:]), host.Uint16(hdr[6:]), host.Uint16(hdr[8:]))

	// The far host answers every segment with a RST (nothing listens there); they come
	// back through the TUN. The deadline works because the file is non-blocking.
	buf := make([]byte, vnetHdrLen+65535) // a shorter buffer truncates reads silently
	resets := 0
	for resets < segments {
		if err := tun.SetReadDeadline(time.Now().Add(wait)); err != nil {
			return err
		}
		n, err := tun.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		} else if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n < vnetHdrLen {
			continue
		}
		resets += describe(buf[:vnetHdrLen], buf[vnetHdrLen:n])
	}
	fmt.Printf("read %d RSTs back through %s\n", resets, name)
	return nil
}

// openTUN creates the device the way the kernel wants it: every ioctl on the raw
// descriptor, which is non-blocking from the start, and only then an *os.File.
// Never call Fd() on that file: it switches the descriptor to blocking mode, after
// which SetReadDeadline silently stops working (use SyscallConn().Control instead).
func openTUN(name string, offload uintptr) (*os.File, error) {
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var ifr [40]byte // struct ifreq: the name, then ifr_flags (a host-order short)
	copy(ifr[:15], name)
	*(*uint16)(unsafe.Pointer(&ifr[16])) = iffTun | iffNoPi | iffVnetHdr
	size := int32(vnetHdrLen)
	// Each unsafe.Pointer is converted inside the Syscall call itself, as package unsafe
	// requires, so the variable cannot move before the kernel reads it.
	_, _, e1 := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETIFF,
		uintptr(unsafe.Pointer(&ifr[0])))
	_, _, e2 := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETVNETHDRSZ,
		uintptr(unsafe.Pointer(&size))) // a pointer to the size
	_, _, e3 := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETOFFLOAD,
		offload) // the flags themselves, no pointer
	for i, e := range []syscall.Errno{e1, e2, e3} {
		if e != 0 {
			syscall.Close(fd)
			return nil, fmt.Errorf("%s: %w", []string{"TUNSETIFF", "TUNSETVNETHDRSZ",
				"TUNSETOFFLOAD"}[i], e)
		}
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// tcpFrame builds one IPv4/TCP (or IPv6/TCP) packet with `payload` bytes, as a TCP
// stack would have sent them in several segments: DF set and a complete header checksum
// for IPv4, and in the TCP checksum field only the pseudo-header sum (folded, not
// complemented), because NEEDS_CSUM means "add the rest": the kernel sums header and
// payload onto it.
func tcpFrame(src, dst net.IP, payload int) []byte {
	ipHdrLen := ipv4HdrLen
	if len(src) == net.IPv6len {
		ipHdrLen = ipv6HdrLen
	}
	total := ipHdrLen + tcpHdrLen + payload
	p := make([]byte, total)
	ip, tcp := p[:ipHdrLen], p[ipHdrLen:]
	if ipHdrLen == ipv6HdrLen {
		ip[0] = 0x60                                                  // version 6
		binary.BigEndian.PutUint16(ip[4:], uint16(tcpHdrLen+payload)) // payload length
		ip[6], ip[7] = syscall.IPPROTO_TCP, 64                        // next header, hop limit
		copy(ip[8:24], src)
		copy(ip[24:40], dst)
	} else {
		ip[0] = 0x45 // version 4, 5 words
		binary.BigEndian.PutUint16(ip[2:], uint16(total))
		binary.BigEndian.PutUint16(ip[4:], 100)    // ID: the kernel gives segment i ID + i
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8], ip[9] = 64, syscall.IPPROTO_TCP
		copy(ip[12:16], src)
		copy(ip[16:20], dst)
		binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	}

	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5001)
	binary.BigEndian.PutUint32(tcp[4:], 1000000) // seq: segment i gets + gso_size * i
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[12] = tcpHdrLen / 4 << 4
	tcp[13] = 0x18 // ACK|PSH: the kernel keeps PSH for the last segment only
	binary.BigEndian.PutUint16(tcp[14:], 502)
	for i := range tcp[tcpHdrLen:] {
		tcp[tcpHdrLen+i] = byte(i)
	}
	binary.BigEndian.PutUint16(tcp[tcpCsumOff:], fold(pseudoHeader(src, dst, len(tcp))))
	return p
}

// pseudoHeader is the unfolded sum of source, destination, protocol and TCP length:
// the same words for IPv4 and IPv6 (RFC 8200 8.1 only widens the length to 32 bits).
func pseudoHeader(src, dst net.IP, tcpLen int) uint32 {
	s := sum(src, 0)
	s = sum(dst, s)
	return s + syscall.IPPROTO_TCP + uint32(tcpLen)
}

func sum(b []byte, s uint32) uint32 {
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// describe prints one read: the virtio-net header, stripped, then the packet. A read
// with NEEDS_CSUM (nearly all TCP and UDP once TUN_F_CSUM is on) holds only the
// pseudo-header sum in its checksum field; finish it before the packet goes anywhere
// that checks. A read with a gso_type other than NONE is a super-packet to cut up
// (read.go does). It returns 1 for a TCP RST from the far host.
func describe(hdr, pkt []byte) int {
	h := parseVnetHdr(hdr)
	ip, err := parseIP(pkt)
	if err != nil {
		fmt.Printf("read: flags=%d gso_type=%d, %v: skipped\n", h.flags, h.gsoType, err)
		return 0
	}
	completed := ""
	if h.flags&needsCsum != 0 {
		if err := completeChecksum(h, pkt); err != nil {
			fmt.Printf("read: %v: dropped\n", err)
			return 0
		}
		completed = ", checksum completed"
	}
	isRST := ip.proto == syscall.IPPROTO_TCP && len(pkt) >= ip.hdrLen+tcpHdrLen &&
		pkt[ip.hdrLen+13]&0x04 != 0
	fmt.Printf("read: flags=%d gso_type=%d hdr_len=%d csum_start=%d csum_offset=%d | "+
		"IPv%d %s > %s proto %d length %d rst=%v%s\n", h.flags, h.gsoType, h.hdrLen,
		h.csumStart, h.csumOffset, ip.version, ip.src, ip.dst, ip.proto, len(pkt), isRST,
		completed)
	if isRST {
		return 1
	}
	return 0
}
