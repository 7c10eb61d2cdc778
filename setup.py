"""Builds the native fast path; every other piece of metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vpn.offload._gso",
            ["vpn/offload/_gso.c"],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Werror"],
        ),
    ],
)
