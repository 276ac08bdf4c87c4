"""Link conditions (delay, jitter, loss, rate, ...) as plain data, and the ``tc`` commands for them.

Semantics (those of Mininet's ``TCLink``), per **direction** of a link: a
condition set on a link applies to the frames each end sends, so::

    g.add_edge("client", "nat", delay="20ms")     # client→nat 20 ms, nat→client 20 ms: RTT +40 ms

Each direction is realised by the egress queueing discipline of the sending
instance's interface (Linux ``netem`` and ``tbf`` inside the guest kernel):

``delay``      one-way delay: ``"20ms"``, ``"500us"``, ``"1.5s"``; a bare number is milliseconds.
``jitter``     delay variation, uniform in ±jitter around ``delay`` (needs ``delay``).  As in
               netem, jittered frames may overtake each other (reordering).
``loss``       probability that a frame is dropped: ``0.01`` or ``"1%"`` (independent per frame).
``rate``       a token-bucket cap (``tbf``): ``"50mbit"``, ``"512kbit"``, ``"1gbit"``; a bare
               number is Mbit/s (as Mininet's ``bw``).  Bucket depth: 20 ms at the rate, at least
               two full frames; queue: 50 ms at the rate (at least four frames), tail drop.
``reorder``    probability that a frame skips the delay (is sent at once): needs ``delay``.
``duplicate``  probability that a frame is sent twice.
``corrupt``    probability that one random bit of a frame is flipped.
``limit``      netem's queue in frames (default 1000): frames in flight in the delay line
               beyond it are dropped, so it bounds the bandwidth-delay product.

With both ``rate`` and one of the others, ``netem`` is the root qdisc and the
token bucket its child: a frame is delayed/lost/... first, then queued at the
rate.  An instance with a netem condition (anything but ``rate``) on any
interface has GSO and GRO off on all of them (:func:`offload_argv`), so that
netem acts per Ethernet frame (a token bucket segments aggregates itself).

Everything here is pure: parsing raises :class:`ValueError` with the reason;
the callers (planner, ``stdpkt run``, ``Lab.set_link``) turn it into a
:class:`~stdpkt_lab.errors.ChainError` or :class:`~stdpkt_lab.errors.VariableError`
naming the edge or variable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = [
    "LinkConditions",
    "CONDITION_KEYS",
    "parse_conditions",
    "parse_time",
    "parse_rate",
    "parse_probability",
    "tc_batch",
    "tc_clear",
    "setup_text",
    "QDISC_MODULES",
    "edge_conditions",
    "offload_argv",
]

#: The keys a link (edge attribute, ``Lab.set_link`` keyword) may carry.
CONDITION_KEYS = ("delay", "jitter", "loss", "rate", "reorder", "duplicate", "corrupt", "limit")
#: Kernel modules the qdiscs live in (Debian's UML ships them under /usr/lib/uml/modules).
QDISC_MODULES = ("sch_netem", "sch_tbf")
NETEM_LIMIT = 1000
#: Token-bucket depth in seconds at the rate: UML's timers wake the qdisc late (1-3 ms
#: measured on a loaded host), so a shallow bucket undershoots (2 ms: 43 % of 20 Mbit/s
#: with GSO off; 20 ms: 93 %).
BURST_S = 0.020
#: Token-bucket queue in seconds at the rate (tail drop beyond it).
QUEUE_S = 0.050
MAX_DELAY_S = 60.0
MIN_RATE, MAX_RATE = 8_000, 100_000_000_000

_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|usec|µs|ms|msec|s|sec)?\s*$")
_TIME_UNIT = {"us": 1e-6, "usec": 1e-6, "µs": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z/]*)\s*$")
_RATE_UNIT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
              "k": 1e3, "m": 1e6, "g": 1e9, "bit/s": 1, "kbit/s": 1e3, "mbit/s": 1e6, "gbit/s": 1e9}
_PROB = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")


def parse_time(value: Any, *, what: str = "delay") -> float:
    """``"20ms"``, ``"500us"``, ``"1.5s"`` or a number of milliseconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r}: expected a time such as '20ms'")
    if isinstance(value, (int, float)):
        seconds = float(value) / 1000.0
    elif isinstance(value, str):
        match = _TIME.match(value)
        if not match:
            raise ValueError(f"{what}={value!r}: expected a time such as '20ms', '500us' or '1.5s'")
        seconds = float(match.group(1)) * _TIME_UNIT[(match.group(2) or "ms").lower()]
    else:
        raise ValueError(f"{what}={value!r}: expected a time such as '20ms'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}={value!r}: must be a time of at least 0")
    if seconds > MAX_DELAY_S:
        raise ValueError(f"{what}={value!r}: more than {MAX_DELAY_S:g} s")
    return seconds


def parse_rate(value: Any) -> int:
    """``"50mbit"``, ``"512kbit"``, ``"1gbit"`` or a number of Mbit/s → bits per second."""
    if isinstance(value, bool):
        raise ValueError(f"rate={value!r}: expected a rate such as '50mbit'")
    if isinstance(value, (int, float)):
        bits = float(value) * 1e6
    elif isinstance(value, str):
        match = _RATE.match(value)
        unit = match.group(2).lower() if match else ""
        if match and unit.endswith("bps"):
            raise ValueError(f"rate={value!r}: ambiguous ('bps' is bytes/s to tc); write e.g. '50mbit'")
        if not match or (unit or "mbit") not in _RATE_UNIT:
            raise ValueError(f"rate={value!r}: expected a rate such as '50mbit', '512kbit' or '1gbit'")
        bits = float(match.group(1)) * _RATE_UNIT[unit or "mbit"]
    else:
        raise ValueError(f"rate={value!r}: expected a rate such as '50mbit'")
    if not math.isfinite(bits) or not MIN_RATE <= bits <= MAX_RATE:
        raise ValueError(f"rate={value!r}: outside 8kbit..100gbit")
    return int(round(bits))


def parse_probability(value: Any, *, what: str = "loss") -> float:
    """``0.01`` (a probability 0..1) or ``"1%"`` (a percentage) → a probability."""
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r}: expected a probability such as 0.01 or '1%'")
    if isinstance(value, (int, float)):
        p = float(value)
    elif isinstance(value, str):
        match = _PROB.match(value)
        if not match:
            raise ValueError(f"{what}={value!r}: expected a probability such as 0.01 or '1%'")
        p = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    else:
        raise ValueError(f"{what}={value!r}: expected a probability such as 0.01 or '1%'")
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        hint = f" (for {value}% write '{value}%')" if isinstance(value, (int, float)) and 1 < value <= 100 else ""
        raise ValueError(f"{what}={value!r}: a probability must be between 0 and 1 (or 0%..100%){hint}")
    return p


def _parse_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ValueError(f"limit={value!r}: expected a number of frames such as 1000")
    n = int(str(value).strip())
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"limit={value!r}: outside 1..1000000 frames")
    return n


@dataclass(frozen=True)
class LinkConditions:
    """What one direction of a link does to its frames (``None`` = not set)."""

    delay: float | None = None      # seconds
    jitter: float | None = None     # seconds
    loss: float | None = None       # probability
    rate: int | None = None         # bits/s
    reorder: float | None = None    # probability
    duplicate: float | None = None  # probability
    corrupt: float | None = None    # probability
    limit: int | None = None        # frames (netem)

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    @property
    def needs_netem(self) -> bool:
        return any(getattr(self, k) is not None for k in CONDITION_KEYS if k != "rate")

    @property
    def shape(self) -> str:
        """``""`` (nothing), ``"netem"``, ``"tbf"`` or ``"netem+tbf"``: the qdisc tree."""
        parts = (["netem"] if self.needs_netem else []) + (["tbf"] if self.rate is not None else [])
        return "+".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Only what is set, in the units shown (s, probability, bit/s, frames)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def plain(self) -> dict[str, Any]:
        """What is set, as the strings a graph or lab file takes (round-trips)."""
        out: dict[str, Any] = {}
        for key, value in self.as_dict().items():
            if key in ("delay", "jitter"):
                out[key] = _fmt_time(value)
            elif key == "rate":
                out[key] = _fmt_rate(value)
            elif key == "limit":
                out[key] = value
            else:
                out[key] = _fmt_pct(value)
        return out

    def label(self) -> str:
        """A short label: ``20ms±2ms 1% 50Mbit/s``."""
        parts = []
        if self.delay is not None:
            parts.append(_fmt_time(self.delay) + (f"±{_fmt_time(self.jitter)}" if self.jitter else ""))
        if self.loss:
            parts.append(f"loss {_fmt_pct(self.loss)}")
        if self.rate is not None:
            parts.append(_fmt_rate(self.rate))
        for key in ("reorder", "duplicate", "corrupt"):
            if getattr(self, key):
                parts.append(f"{key[:3]} {_fmt_pct(getattr(self, key))}")
        return " ".join(parts)

    def merged(self, other: LinkConditions) -> LinkConditions:
        """``self`` with every field ``other`` sets replaced."""
        return replace(self, **other.as_dict())


def parse_conditions(values: Mapping[str, Any], *, base: LinkConditions | None = None) -> LinkConditions:
    """Check ``values`` (keys of :data:`CONDITION_KEYS`; ``None`` unsets a key) → conditions.

    Raises :class:`ValueError` naming the key and the value.
    """
    unknown = [k for k in values if k not in CONDITION_KEYS]
    if unknown:
        raise ValueError(f"unknown link condition {unknown[0]!r} (known: {', '.join(CONDITION_KEYS)})")
    parsed: dict[str, Any] = dict(base.as_dict()) if base is not None else {}
    for key, value in values.items():
        if value is None:
            parsed.pop(key, None)
        elif key in ("delay", "jitter"):
            parsed[key] = parse_time(value, what=key)
        elif key == "rate":
            parsed[key] = parse_rate(value)
        elif key == "limit":
            parsed[key] = _parse_limit(value)
        else:
            parsed[key] = parse_probability(value, what=key)
    cond = LinkConditions(**parsed)
    for key in ("jitter", "reorder"):
        if getattr(cond, key) and not cond.delay:
            raise ValueError(f"{key}={values.get(key, getattr(cond, key))!r} needs a delay (set delay= too)")
    if cond.jitter is not None and cond.delay is not None and cond.jitter > cond.delay:
        raise ValueError(f"jitter={_fmt_time(cond.jitter)} is larger than delay={_fmt_time(cond.delay)}")
    return cond


# ---------------------------------------------------------------- tc commands
def _us(seconds: float) -> str:
    return f"{int(round(seconds * 1e6))}us"


def _pct(p: float) -> str:
    return f"{p * 100:.6g}%"


def _netem_args(cond: LinkConditions) -> list[str]:
    args = ["netem", "limit", str(cond.limit or NETEM_LIMIT)]
    if cond.delay:
        args += ["delay", _us(cond.delay)]
        if cond.jitter:
            args.append(_us(cond.jitter))
    for key in ("loss", "duplicate", "corrupt", "reorder"):
        value = getattr(cond, key)
        if value:
            args += ([key, "random"] if key == "loss" else [key]) + [_pct(value)]
    return args


def _tbf_args(rate: int, mtu: int) -> list[str]:
    frame = mtu + 14
    burst = max(2 * frame, int(rate / 8 * BURST_S))
    limit = max(4 * frame, int(rate / 8 * QUEUE_S)) + burst
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst), "limit", str(limit)]


def tc_batch(dev: str, cond: LinkConditions, *, mtu: int = 1500, previous: str = "") -> list[str]:
    """``tc -batch`` lines that turn ``dev``'s egress qdisc from shape ``previous`` into ``cond``.

    The trees: ``netem`` alone at the root (handle 1:); ``tbf`` alone at the root
    (handle 2:); both: ``tbf`` at the root and ``netem`` as its child (2:1, handle
    10:), Mininet's order (a shaper over the emulator).  Every change is a
    ``replace``: the same qdisc is changed in place (queued frames and connections
    stay), a different root is swapped in one step, so there is never a moment
    without the rate cap that the new conditions ask for (a ``del`` then ``add``
    let a burst through at line rate).
    """
    shape = cond.shape
    root = f"qdisc replace dev {dev} root"
    if shape == "netem":
        return [f"{root} handle 1: " + " ".join(_netem_args(cond))]
    assert cond.rate is not None
    tbf = _tbf_args(cond.rate, mtu)
    lines = [f"{root} handle 2: " + " ".join(tbf)]
    if shape == "netem+tbf":
        lines.append(f"qdisc replace dev {dev} parent 2:1 handle 10: " + " ".join(_netem_args(cond)))
    elif previous == "netem+tbf":  # the netem child goes; the tbf's own kind of queue comes back
        lines.append(f"qdisc replace dev {dev} parent 2:1 handle 10: bfifo limit {tbf[tbf.index('limit') + 1]}")
    return lines


def tc_clear(dev: str, previous: str) -> list[str]:
    """Lines that restore ``dev``'s default qdisc (nothing when nothing was set)."""
    return [f"qdisc del dev {dev} root"] if previous else []


def offload_argv(dev: str, *, on: bool) -> list[str]:
    """``ethtool`` argv turning ``dev``'s GSO and GRO off (or on again).

    With them on, the qdisc sees aggregates of up to 45 frames (a TCP sender's
    GSO, a forwarder's GRO) and netem loses, duplicates, reorders them whole: a
    ``loss`` would be per aggregate, not per frame (measured: TCP at 0.2 % loss
    ran 7× faster than the Mathis model; with both off it matches it).  So an
    instance with a netem condition has both off on every one of its interfaces.
    """
    state = "on" if on else "off"
    return ["ethtool", "-K", dev, "gso", state, "gro", state]


def setup_text(conditions: Mapping[str, tuple[LinkConditions, int]], devices: Sequence[str] = ()) -> str:
    """Shell text for an instance's set-up: apply ``{device: (conditions, mtu)}`` at boot
    (``devices``: all of the instance's interfaces, whose GSO/GRO go off).

    On failure the guest says why on its console and powers off, so the boot
    fails with that reason instead of running an experiment without its conditions.
    """
    lines = [line for dev, (cond, mtu) in sorted(conditions.items()) if not cond.empty
             for line in tc_batch(dev, cond, mtu=mtu)]
    if not lines:
        return ""
    body = "\n".join(lines)
    offloads = "".join(
        f"_err=$({' '.join(offload_argv(dev, on=False))} 2>&1) || _fail \"ethtool on {dev}: $_err\"\n"
        for dev in sorted(set(devices) | set(conditions))
        if any(cond.needs_netem for cond, _ in conditions.values()))
    return (
        "# link conditions (stdpkt_lab.describe.conditions)\n"
        '_fail() { echo "@@STDPKT FAIL link conditions not applied: $(echo $1)"; busybox poweroff -f; }\n'
        f"modprobe -a -q {' '.join(QDISC_MODULES)} 2>/dev/null\n"
        f"{offloads}"
        f"_err=$(tc -batch - 2>&1 <<'STDPKT_TC'\n{body}\nSTDPKT_TC\n) || _fail \"tc: $_err\"\n"
    )


def _fmt_time(seconds: float) -> str:
    if seconds >= 1 and (seconds * 1000) % 1000 == 0:
        return f"{seconds:g}s"
    if (seconds * 1e6) % 1000 < 1e-6 or seconds >= 0.01:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def _fmt_pct(p: float) -> str:
    return f"{p * 100:.4g}%"


def _fmt_rate(bits: int) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits}bit"


def edge_conditions(a: str, b: str, attrs: Mapping[str, Any]) -> dict[tuple[str, str], LinkConditions]:
    """An edge's attributes → conditions per direction ``(sender, receiver)``.

    The keys of :data:`CONDITION_KEYS` apply to both directions; ``egress={node: {...}}``
    adds to (or overrides) them for the frames ``node`` sends.  Raises
    :class:`~stdpkt_lab.errors.ChainError` naming the edge and the value.
    """
    from ..errors import ChainError

    common = {k: attrs[k] for k in CONDITION_KEYS if k in attrs}
    per = attrs.get("egress") or {}
    if not isinstance(per, Mapping) or not all(n in (a, b) for n in per):
        raise ChainError(f"link {a!r}–{b!r}: egress={per!r}: expected {{{a!r} or {b!r}: {{delay: ...}}}}")
    try:
        both = parse_conditions(common)
    except ValueError as exc:
        raise ChainError(f"link {a!r}–{b!r}: {exc}") from None
    out = {}
    for src, dst in ((a, b), (b, a)):
        extra = per.get(src) or {}
        if not isinstance(extra, Mapping):
            raise ChainError(f"link {a!r}–{b!r}: egress[{src!r}]={extra!r}: expected a mapping")
        try:
            cond = parse_conditions(extra, base=both) if extra else both
        except ValueError as exc:
            raise ChainError(f"link {src!r}→{dst!r}: {exc}") from None
        if not cond.empty:
            out[(src, dst)] = cond
    return out
