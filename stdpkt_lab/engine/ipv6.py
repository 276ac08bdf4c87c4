"""IPv6 on or off in a guest: the kernel command line sets the boot state
(:func:`~.bootprofile.module_args`); a setup prelude changes it when the spec wants
otherwise (a pooled instance booted blank) or loads the module when it is wanted."""

from __future__ import annotations

__all__ = ["ipv6_setup"]

_CONF = "/proc/sys/net/ipv6/conf"

#: IPv6 wanted: load the module now (not at the first AF_INET6 socket, so the interfaces
#: have link-local addresses from the start) and enable it on every interface
_ON = ("# IPv6 on (stdpkt: ipv6=True)\n"
       "modprobe ipv6 2>/dev/null\n"
       f"echo 0 > {_CONF}/default/disable_ipv6; echo 0 > {_CONF}/all/disable_ipv6\n")
#: IPv6 unwanted in a kernel booted with it: off on every interface, if the module is loaded
_OFF = ("# IPv6 off (stdpkt: ipv6=False)\n"
        f"if [ -e {_CONF}/all ]; then echo 1 > {_CONF}/default/disable_ipv6; "
        f"echo 1 > {_CONF}/all/disable_ipv6; fi\n")


def ipv6_setup(wanted: bool, *, booted_with: bool) -> str:
    """Shell text to run before the NF's setup ('' when the boot state is already right)."""
    if wanted:
        return _ON
    return _OFF if booted_with else ""
