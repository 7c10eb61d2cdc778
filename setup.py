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


setup(
    ext_modules=[
        Extension("vpn.core.wireguard._transport", ["vpn/core/wireguard/_transport.c"],
                  libraries=["crypto"], extra_compile_args=_FLAGS),
        Extension("vpn.core.offload._gso", ["vpn/core/offload/_gso.c"], extra_compile_args=_FLAGS),
        Extension("vpn.core.offload._gro", ["vpn/core/offload/_gro.c"], extra_compile_args=_FLAGS),
        Extension("vpn.io._udp", ["vpn/io/_udp.c"], libraries=["crypto"], extra_compile_args=_FLAGS),
    ],
    cmdclass={"build_ext": _BuildExt},
)
