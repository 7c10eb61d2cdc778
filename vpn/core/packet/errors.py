"""The single exception type raised by the packet codecs and the offload engine.

Each error carries a short, stable snake_case ``reason`` that callers use as a drop-counter key.
"""

from __future__ import annotations


class OffloadError(ValueError):
    """A packet or virtio-net header that the kernel would reject or that we cannot handle."""

    reason: str

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason.replace("_", " "))
        self.reason = reason
