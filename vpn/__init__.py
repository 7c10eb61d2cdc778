"""A WireGuard-compatible userspace VPN endpoint that uses the TUN device's offloads."""


def version() -> str:
    """The installed distribution's version, for --version. importlib.metadata (with email,
    zipfile and csv) is imported only when asked: it would otherwise stay in every
    endpoint's memory, about 4 MB."""
    from importlib import metadata

    try:
        return metadata.version("vpn")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"
