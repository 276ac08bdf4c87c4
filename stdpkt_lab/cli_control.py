"""``stdpkt attach`` / ``detach`` / ``ls``: new channels for running named instances
(the control socket of :mod:`stdpkt_lab.engine.control`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_control_commands"]

ATTACH_HELP = """\
Hot-plug a new interface into a running `stdpkt run --name NAME` instance:

  stdpkt attach NAME IF2="p4|p5" IP2=10.0.2.1 NETMASK2=24 [MTU2=1500]

eth2 appears inside the instance, addressed, and is relayed to the named pipes
p4 (frames in) and p5 (frames out), pcap streams as for `stdpkt run`. Nothing
restarts. `stdpkt detach NAME 2` removes it again; an attached channel whose
pipe ends is detached on its own (the instance goes on).
"""


def cmd_attach(args: argparse.Namespace) -> int:
    from .engine.control import call, parse_attach

    req = parse_attach(args.variables)
    reply = call(args.name, req)
    print(f"{args.name}: attached {reply['device']}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    from .engine.control import call
    from .errors import VariableError

    text = args.interface.removeprefix("eth")
    if not text.isdigit():
        raise VariableError("INTERFACE", f"{args.interface!r}: give its number (2) or name (eth2)")
    call(args.name, {"op": "detach", "index": int(text)})
    print(f"{args.name}: detached eth{text}")
    return 0


def _describe(iface: dict[str, Any]) -> str:
    where = f"{iface['rx']}|{iface['tx']}" if iface.get("rx") else "-"
    extra = " (attached)" if iface.get("attached") else ""
    return f"eth{iface['index']} {iface.get('address') or '-'} {where}{extra}"


def cmd_ls(_args: argparse.Namespace) -> int:
    from .engine.control import list_instances

    for info in list_instances():
        ifs = "; ".join(_describe(i) for i in info["interfaces"])
        print(f"{info['name']}\tpid {info['pid']}\t{info['state']}\t{ifs}")
    return 0


def add_control_commands(sub: Any) -> None:
    attach = sub.add_parser("attach", help="hot-plug a new channel into a running named instance",
                            description=ATTACH_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    attach.add_argument("name", metavar="NAME")
    attach.add_argument("variables", nargs="+", metavar="VAR=VALUE", help='IFn="RX|TX" IPn= NETMASKn= MTUn=')
    attach.set_defaults(func=cmd_attach)
    detach = sub.add_parser("detach", help="remove an attached channel from a running named instance")
    detach.add_argument("name", metavar="NAME")
    detach.add_argument("interface", metavar="INTERFACE", help="its number (2) or name (eth2)")
    detach.set_defaults(func=cmd_detach)
    ls = sub.add_parser("ls", help="list this user's running named instances and their interfaces")
    ls.set_defaults(func=cmd_ls)
