"""The native fast path's C modules; every other piece of metadata lives in pyproject.toml.

vpn/core/wireguard/_transport.c links the system's OpenSSL libcrypto (Debian: libssl-dev);
vpn/core/offload/_gso.c and _gro.c need only the compiler and the Python headers."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -O3 is CPython's own default for extensions; warnings are errors so they get fixed.
_FLAGS = ["-O3", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers"]


class _BuildExt(build_ext):
    """A failed compile says what to install instead of only the compiler's output."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            raise SystemExit(
                f"building {ext.name} failed ({error}): it needs a C compiler, the Python "
                "headers and OpenSSL's (Debian: apt-get install build-essential python3-dev "
                "libssl-dev, which scripts/bootstrap.sh does)"
            ) from error


# The shared headers (vpn/core/include/): wire facts, byte order, checksums, drop counts and
# the datagram screen's interface; each module's own next to its sources. Listed as
# depends so that a changed header rebuilds.
_INCLUDE = ["vpn/core/include"]
_HEADERS = [f"vpn/core/include/{name}.h"
            for name in ("wire", "packet", "bytes", "checksum", "counts", "screen")]


def _module(name: str, folder: str, sources: list[str], headers: tuple[str, ...] = (),
            libraries: tuple[str, ...] = ()) -> Extension:
    return Extension(name, [f"{folder}/{s}" for s in sources], include_dirs=_INCLUDE,
                     depends=_HEADERS + [f"{folder}/{h}" for h in headers],
                     libraries=list(libraries), extra_compile_args=_FLAGS)


setup(
    ext_modules=[
        _module("vpn.core.wireguard._transport", "vpn/core/wireguard",
                ["_transport.c", "transport_seal.c", "transport_open.c",
                 "transport_run.c"],
                ("transport.h", "replay.h"), libraries=("crypto",)),
        _module("vpn.core.offload._gso", "vpn/core/offload", ["_gso.c"]),
        _module("vpn.core.offload._gro", "vpn/core/offload",
                ["_gro.c", "gro_flows.c", "gro_add.c", "gro_frames.c"], ("gro.h",)),
        _module("vpn.core.wireguard._handshake", "vpn/core/wireguard",
                ["_handshake.c", "handshake_crypto.c", "handshake_key.c",
                 "handshake_steps.c", "handshake_table.c"], ("handshake.h",),
                libraries=("crypto",)),
        _module("vpn.core.wireguard._screen", "vpn/core/wireguard", ["_screen.c"],
                libraries=("crypto",)),
        _module("vpn.io._udp", "vpn/io", ["_udp.c"]),
    ],
    cmdclass={"build_ext": _BuildExt},
)
