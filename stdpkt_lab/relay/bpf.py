"""Compile pcap filter expressions ("tcp port 80") to classic BPF for the trace ring.

The relay runs the program in C on every frame offered to its trace ring.
Compilation goes through libpcap (``pcap_open_dead(DLT_EN10MB, 262144)`` +
``pcap_compile`` via ctypes); when libpcap cannot be loaded it falls back to
``tcpdump -ddd -y EN10MB EXPR``.  Either way a bad expression raises
:class:`~stdpkt_lab.errors.PcapError` naming it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import threading
from dataclasses import dataclass

from stdpkt_lab.errors import PcapError

__all__ = ["Insn", "compile_filter", "compile_with_libpcap", "compile_with_tcpdump"]

DLT_EN10MB = 1
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
MAX_INSNS = 4096


@dataclass(frozen=True)
class Insn:
    """One classic BPF instruction (``struct bpf_insn``)."""

    code: int
    jt: int
    jf: int
    k: int


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lock = threading.Lock()
_libpcap: ctypes.CDLL | None = None
_libpcap_tried = False


def _load_libpcap() -> ctypes.CDLL | None:
    global _libpcap, _libpcap_tried
    if _libpcap_tried:
        return _libpcap
    _libpcap_tried = True
    names = [ctypes.util.find_library("pcap"), "libpcap.so.1", "libpcap.so.0.8", "libpcap.so"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.restype = None
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.restype = None
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _libpcap = lib
        break
    return _libpcap


def compile_with_libpcap(expr: str) -> list[Insn] | None:
    """Compiles through libpcap; None when libpcap is not available."""
    lib = _load_libpcap()
    if lib is None:
        return None
    with _lock:  # pcap_compile was not reentrant before libpcap 1.8
        handle = lib.pcap_open_dead(DLT_EN10MB, SNAPLEN)
        if not handle:
            return None
        try:
            prog = _BpfProgram()
            rc = lib.pcap_compile(
                handle, ctypes.byref(prog), expr.encode(), 1, PCAP_NETMASK_UNKNOWN
            )
            if rc != 0:
                why = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
                raise PcapError(f"bad capture filter {expr!r}: {why}")
            try:
                return [
                    Insn(i.code, i.jt, i.jf, i.k)
                    for i in (prog.bf_insns[n] for n in range(prog.bf_len))
                ]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)


def compile_with_tcpdump(expr: str, *, tcpdump: str | None = None) -> list[Insn]:
    """Compiles by running ``tcpdump -ddd -y EN10MB EXPR`` and parsing its decimal listing."""
    exe = tcpdump or shutil.which("tcpdump")
    if exe is None:
        raise PcapError(
            f"cannot compile capture filter {expr!r}: neither libpcap nor tcpdump found"
        )
    try:
        proc = subprocess.run(
            [exe, "-ddd", "-y", "EN10MB", expr],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PcapError(f"cannot compile capture filter {expr!r}: {exc}") from exc
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "tcpdump failed"
        raise PcapError(f"bad capture filter {expr!r}: {why}")
    try:
        lines = proc.stdout.split("\n")
        count = int(lines[0])
        prog = []
        for line in lines[1 : count + 1]:
            code, jt, jf, k = (int(x) for x in line.split())
            prog.append(Insn(code, jt, jf, k))
    except (ValueError, IndexError) as exc:
        raise PcapError(f"cannot parse tcpdump's program for {expr!r}: {exc}") from exc
    if len(prog) != count:
        raise PcapError(f"tcpdump's program for {expr!r} is truncated")
    return prog


def compile_filter(expr: str) -> list[Insn]:
    """Classic BPF for ``expr`` on Ethernet frames; PcapError names a bad expression."""
    if not isinstance(expr, str) or not expr.strip():
        raise PcapError(f"bad capture filter {expr!r}: empty expression")
    prog = compile_with_libpcap(expr)
    if prog is None:
        prog = compile_with_tcpdump(expr)
    if not prog or len(prog) > MAX_INSNS:
        raise PcapError(f"capture filter {expr!r} compiled to {len(prog)} instructions")
    return prog
