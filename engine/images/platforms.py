"""Platforms with Go's names (linux/amd64, linux/arm/v7): the host's, parsing of the
``platform`` parameter, and matching an index entry against a wanted platform."""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass

from engine.errors import InvalidParameter

_ARCH_ALIASES = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"), "arm": ("arm", "v7"),
    "i386": ("386", ""), "i686": ("386", ""), "386": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "mips64le": ("mips64le", ""), "loong64": ("loong64", ""), "loongarch64": ("loong64", ""),
}
_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux",
    "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows",
})


def host_arch() -> tuple[str, str]:
    """The host's architecture and variant with Go's names (amd64, arm64, arm/v7)."""
    machine = host_platform.machine().lower()
    return _ARCH_ALIASES.get(machine, (machine, ""))


def parse_platform(value: str | None) -> tuple[str, str, str]:
    """``os[/arch[/variant]]`` or ``arch`` → (os, architecture, variant); Linux only."""
    if not value:
        arch, variant = host_arch()
        return "linux", arch, variant
    parts = value.lower().split("/")
    if len(parts) > 3 or not all(parts):
        raise InvalidParameter(f'"{value}": unknown operating system or architecture: '
                               "invalid argument")
    if len(parts) == 1:
        if parts[0] in _KNOWN_OS:
            os_name, (arch, variant) = parts[0], host_arch()
        else:
            os_name, (arch, variant) = "linux", _normalise_arch(value, parts[0], "")
    else:
        os_name = parts[0]
        arch, variant = _normalise_arch(value, parts[1], parts[2] if len(parts) == 3 else "")
    if os_name not in _KNOWN_OS:
        raise InvalidParameter(f'"{value}": unknown operating system or architecture: '
                               "invalid argument")
    if os_name != "linux":
        raise InvalidParameter("operating system is not supported")
    return os_name, arch, variant


def _normalise_arch(value: str, arch: str, variant: str) -> tuple[str, str]:
    if arch not in _ARCH_ALIASES:
        raise InvalidParameter(f'"{value}": unknown operating system or architecture: '
                               "invalid argument")
    name, default_variant = _ARCH_ALIASES[arch]
    if name == "arm64" and variant in ("v8", "8"):
        variant = ""
    return name, variant or default_variant


# =========================================================================== matching
@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def parse(cls, value: str | None) -> Platform:
        return cls(*parse_platform(value))

    @classmethod
    def from_object(cls, data: object) -> Platform | None:
        """An OCI ``platform`` object; None when it is missing or unusable."""
        if not isinstance(data, dict):
            return None
        os_name, arch = data.get("os"), data.get("architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            return None
        variant = data.get("variant")
        return cls(os_name, arch, variant if isinstance(variant, str) else "")


# Variants a CPU runs, best first (containerd's platforms.Ordered, in spirit).
_COMPATIBLE_VARIANTS = {
    "arm": ("v8", "v7", "v6", "v5"),
    "arm64": ("v9", "v8"),
    "amd64": ("v1", "v2", "v3", "v4"),
}
_DEFAULT_VARIANT = {"arm64": "v8", "amd64": "v1", "arm": "v7"}


def _canonical(platform: Platform) -> Platform:
    arch, variant = _ARCH_ALIASES.get(platform.architecture.lower(), (platform.architecture, ""))
    variant = (platform.variant or variant).lower()
    if variant == _DEFAULT_VARIANT.get(arch):
        variant = ""
    return Platform(platform.os.lower(), arch, variant)


def match_rank(wanted: Platform, candidate: Platform) -> int | None:
    """How well ``candidate`` serves ``wanted``: 0 is exact, higher is worse, None is no
    match. A wanted arm/v7 also runs v6 and v5; an unspecified variant means the
    architecture's default."""
    want, have = _canonical(wanted), _canonical(candidate)
    if want.os != have.os or want.architecture != have.architecture:
        return None
    if want.variant == have.variant:
        return 0
    order = _COMPATIBLE_VARIANTS.get(want.architecture, ())
    want_v = want.variant or _DEFAULT_VARIANT.get(want.architecture, "")
    have_v = have.variant or _DEFAULT_VARIANT.get(have.architecture, "")
    if want.architecture == "amd64":
        # amd64 levels are cumulative upwards: a v2 machine runs v1 images, not v3.
        if want_v in order and have_v in order and order.index(have_v) <= order.index(want_v):
            return 1 + order.index(want_v) - order.index(have_v)
        return None
    if want_v in order and have_v in order and order.index(have_v) >= order.index(want_v):
        return 1 + order.index(have_v) - order.index(want_v)
    return None
