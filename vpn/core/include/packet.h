/* The packet facts the offload modules (_gso.c, _gro.c) share: <linux/virtio_net.h>'s
 * header as vpn/core/packet/virtio.py has it, and the IP and TCP numbers of
 * vpn/core/packet/headers.py. Each name is the Python name; test_wire_header.py checks the
 * values. */
#ifndef VPN_PACKET_H
#define VPN_PACKET_H

/* virtio.py */
#define VIRTIO_NET_HDR_LEN 10
#define FLAG_NEEDS_CSUM 1
#define FLAG_DATA_VALID 2
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_UDP 3
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80
#define TCP_CSUM_OFFSET 16
#define UDP_CSUM_OFFSET 6

/* headers.py */
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK_FLAG 0x10
#define TCP_CWR 0x80

#endif
