"""A WireGuard-compatible userspace VPN endpoint that uses the TUN device's offloads."""
