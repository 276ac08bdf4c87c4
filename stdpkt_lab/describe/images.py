"""Kathará image names → the Debian packages that provide the same programs on the host.

Instances run the host's programs (the root is the host's filesystem, read-only), so a
Kathará ``DEV[image]="kathara/frr"`` becomes "the host must have Debian's ``frr``".
``scripts/install-system-packages.sh`` installs every package of this table.  An image
not in the table gives a warning and the device uses whatever the host has.

=====================  ===========================================================
image                  Debian packages (installed by set-up)
=====================  ===========================================================
kathara/base           iproute2 iptables tcpdump iputils-ping curl wget netcat-openbsd
                       apache2 bind9 dnsmasq (the base image carries these)
kathara/frr            frr (+ base)
kathara/quagga         frr (Quagga is gone from Debian 12: FRR speaks its vtysh
                       dialect and reads its configs; see the README)
kathara/bind           bind9 bind9-dnsutils (+ base)
kathara/dnsmasq        dnsmasq (+ base)
kathara/apache         apache2 (+ base)
kathara/sdn            openvswitch-switch (not installed: warning)
kathara/p4, pox, bird  not provided (warning)
=====================  ===========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["IMAGE_PACKAGES", "BASE_PACKAGES", "image_packages", "missing_packages", "installed"]

#: What every device expects (the programs of kathara/base that startup scripts use most).
BASE_PACKAGES: tuple[str, ...] = (
    "iproute2", "iptables", "tcpdump", "iputils-ping", "curl", "wget", "netcat-openbsd",
)

#: image (without tag or registry) → Debian packages beyond BASE_PACKAGES.  None: known
#: image the host cannot provide.
IMAGE_PACKAGES: Mapping[str, tuple[str, ...] | None] = {
    "kathara/base": ("apache2", "bind9", "dnsmasq"),
    "kathara/frr": ("frr",),
    "kathara/quagga": ("frr",),
    "kathara/bind": ("bind9",),
    "kathara/dnsmasq": ("dnsmasq",),
    "kathara/apache": ("apache2",),
    "kathara/sdn": ("openvswitch-switch",),
    "kathara/openvswitch": ("openvswitch-switch",),
    "kathara/p4": None,
    "kathara/pox": None,
    "kathara/bird": None,
    "kathara/bird2": None,
    "kathara/openbgpd": None,
    "kathara/scion": None,
}

_DPKG_STATUS = "/var/lib/dpkg/status"


def _strip(image: str) -> str:
    name = image.strip()
    if "@" in name:
        name = name.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for registry in ("docker.io/", "index.docker.io/"):
        if name.startswith(registry):
            name = name[len(registry):]
    return name


def image_packages(image: str) -> tuple[str, ...] | None:
    """Debian packages standing in for ``image`` (``"kathara/frr:8"`` → ``("frr", ...)``);
    None when the image is unknown or cannot be provided."""
    extra = IMAGE_PACKAGES.get(_strip(image), None)
    if extra is None:
        return None
    return (*BASE_PACKAGES, *extra)


def known_image(image: str) -> bool:
    return _strip(image) in IMAGE_PACKAGES


def installed(status_file: str = _DPKG_STATUS) -> set[str]:
    """Names of the Debian packages installed on this host (empty if there is no dpkg)."""
    found: set[str] = set()
    if not os.path.exists(status_file):
        return found
    name = ""
    with open(status_file, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Status: ") and line.rstrip().endswith(" installed") and name:
                found.add(name)
    return found


def missing_packages(packages: tuple[str, ...], have: set[str] | None = None) -> list[str]:
    have = installed() if have is None else have
    if not have:  # not a Debian host: cannot tell
        return []
    return [p for p in packages if p not in have]
