"""What the observation layer needs from a running chain, as a structural type.

:class:`~stdpkt_lab.lab.Lab` satisfies it; the observe package never imports ``lab``
(the lab is the layer above: it passes itself in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..describe import ChainPlan
    from ..engine.instance import Instance
    from ..engine.links import Link

__all__ = ["ChainSource"]


class ChainSource(Protocol):
    """Links, instances and the plan of a running chain (what :class:`~.sampler.Sampler` reads)."""

    @property
    def plan(self) -> ChainPlan: ...

    @property
    def links(self) -> Sequence[Link]: ...

    @property
    def instances(self) -> Mapping[str, Instance]: ...
