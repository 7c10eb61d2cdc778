"""The native transport module (vpn/wireguard/_transport.c); everything else is in
pyproject.toml. It links the system's OpenSSL libcrypto (Debian: libssl-dev)."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


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
        Extension(
            "vpn.wireguard._transport",
            ["vpn/wireguard/_transport.c"],
            libraries=["crypto"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ],
    cmdclass={"build_ext": _BuildExt},
)
