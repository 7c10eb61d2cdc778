"""Packet codecs: IPv4/IPv6/TCP/UDP header layout, the virtio-net header and checksums.

Everything here is pure: it takes buffers and returns values, with no I/O.
"""
