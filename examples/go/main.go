// Command tunjumbo opens a TUN device with IFF_VNET_HDR, writes ONE jumbo TCP frame
// into it with a correct virtio-net header, and reads what comes back, stripping the
// header from every read. The kernel cuts the frame into MSS-sized segments wherever it
// leaves on a link without TSO, and fills in every checksum.
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
	vnetHdrLen  = 10   // sizeof(struct virtio_net_hdr); TUNSETVNETHDRSZ below says so
	needsCsum   = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM
	gsoNone     = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4    = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	ipv4HdrLen  = 20
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
	mss := flag.Int("mss", 1460, "payload bytes per segment (1500 - 20 - 20)")
	segments := flag.Int("segments", 10, "segments' worth of payload in the frame")
	flag.Parse()
	if err := run(*name, *addr, net.ParseIP(*src).To4(), net.ParseIP(*dst).To4(), *mss,
		*segments); err != nil {
		fmt.Fprintln(os.Stderr, "tunjumbo:", err)
		os.Exit(1)
	}
}

func run(name, addr string, src, dst net.IP, mss, segments int) error {
	if src == nil || dst == nil {
		return errors.New("-src and -dst must be IPv4 addresses")
	}
	tun, err := openTUN(name)
	if err != nil {
		return err
	}
	defer tun.Close() // a non-persistent TUN disappears with its last descriptor
	for _, args := range [][]string{{"addr", "add", addr, "dev", name}, {"link", "set", name, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	fmt.Printf("%s open: IFF_VNET_HDR, header size %d, TUNSETOFFLOAD TUN_F_CSUM|TUN_F_TSO4\n",
		name, vnetHdrLen)

	payload := mss*(segments-1) + lastPayload
	frame := tcpFrame(src, dst, payload)
	hdr := make([]byte, vnetHdrLen)
	hdr[0] = needsCsum                            // flags: the kernel completes the TCP checksum
	hdr[1] = gsoTCPv4                             // gso_type: a TCP/IPv4 super-packet
	host.PutUint16(hdr[2:], ipv4HdrLen+tcpHdrLen) // hdr_len: IP + TCP headers with options
	host.PutUint16(hdr[4:], uint16(mss))          // gso_size: payload per segment, NOT the MTU
	host.PutUint16(hdr[6:], ipv4HdrLen)           // csum_start: where the TCP header begins
	host.PutUint16(hdr[8:], tcpCsumOff)           // csum_offset: the checksum within it
	if _, err := tun.Write(append(hdr, frame...)); err != nil {
		return fmt.Errorf("write: %w", err) // EINVAL: the header does not describe the frame
	}
	fmt.Printf("wrote one %d-byte IPv4 frame (%d x %d + %d bytes of payload): flags=%d "+
		"gso_type=%d hdr_len=%d gso_size=%d csum_start=%d csum_offset=%d\n",
		len(frame), segments-1, mss, lastPayload, hdr[0], hdr[1], host.Uint16(hdr[2:]),
		host.Uint16(hdr[4:]), host.Uint16(hdr[6:]), host.Uint16(hdr[8:]))

	// The far host answers every segment with a RST (nothing listens there); they come
	// back through the TUN. The deadline works because the file is non-blocking.
	buf := make([]byte, vnetHdrLen+65535) // a shorter buffer truncates reads silently
	resets := 0
	for resets < segments {
		if err := tun.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
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
func openTUN(name string) (*os.File, error) {
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
		tunFCsum|tunFTso4) // the flags themselves, no pointer
	for i, e := range []syscall.Errno{e1, e2, e3} {
		if e != 0 {
			syscall.Close(fd)
			return nil, fmt.Errorf("%s: %w", []string{"TUNSETIFF", "TUNSETVNETHDRSZ",
				"TUNSETOFFLOAD"}[i], e)
		}
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// tcpFrame builds one IPv4/TCP packet with `payload` bytes, as a TCP stack would have
// sent them in several segments: DF set, a complete IPv4 header checksum, and in the
// TCP checksum field only the pseudo-header sum (folded, not complemented), because
// NEEDS_CSUM means "add the rest": the kernel sums header and payload onto it.
func tcpFrame(src, dst net.IP, payload int) []byte {
	total := ipv4HdrLen + tcpHdrLen + payload
	p := make([]byte, total)
	ip, tcp := p[:ipv4HdrLen], p[ipv4HdrLen:]
	ip[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(ip[2:], uint16(total))
	binary.BigEndian.PutUint16(ip[4:], 100)    // ID: the kernel gives segment i ID + i
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, syscall.IPPROTO_TCP
	copy(ip[12:16], src)
	copy(ip[16:20], dst)
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))

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

// pseudoHeader is the unfolded sum of source, destination, protocol and TCP length.
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
// (not shown here). It returns 1 for a TCP RST from the far host.
func describe(hdr, pkt []byte) int {
	flags, gsoType := hdr[0], hdr[1]
	hdrLen, csumStart, csumOffset := host.Uint16(hdr[2:]), host.Uint16(hdr[6:]), host.Uint16(hdr[8:])
	if len(pkt) < ipv4HdrLen || pkt[0]>>4 != 4 {
		fmt.Printf("read: flags=%d gso_type=%d, not IPv4 (version %d): skipped\n", flags,
			gsoType, pkt[0]>>4)
		return 0
	}
	completed := ""
	if flags&needsCsum != 0 {
		at := int(csumStart) + int(csumOffset)
		if at+2 > len(pkt) {
			fmt.Println("read: checksum position outside the packet: dropped")
			return 0
		}
		binary.BigEndian.PutUint16(pkt[at:], ^fold(sum(pkt[csumStart:], 0)))
		completed = ", checksum completed"
	}
	ihl := int(pkt[0]&0x0f) * 4
	isRST := pkt[9] == syscall.IPPROTO_TCP && len(pkt) >= ihl+tcpHdrLen && pkt[ihl+13]&0x04 != 0
	fmt.Printf("read: flags=%d gso_type=%d hdr_len=%d csum_start=%d csum_offset=%d | "+
		"IPv4 %s > %s proto %d length %d rst=%v%s\n", flags, gsoType, hdrLen, csumStart,
		csumOffset, net.IP(pkt[12:16]), net.IP(pkt[16:20]), pkt[9], len(pkt), isRST, completed)
	if isRST {
		return 1
	}
	return 0
}
