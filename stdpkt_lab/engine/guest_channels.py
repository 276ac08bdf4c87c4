"""The pipes between the host and an instance's kernel besides its ports.

* the console: the kernel writes it (stdout and stderr), our monitor thread reads it;
* the console's input: the kernel's stdin, held open by us and never written (a pooled
  instance is handed its configuration on it: ``CONF name``);
* the exec agent's two pipes, when the spec has one (engine/agent.py).

Our ends go to the caller's ``ours`` list (the instance closes them at teardown), the
kernel's ends to ``theirs`` (the caller passes them to the launcher, then closes them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agent import AgentClient

__all__ = ["GuestChannels", "open_guest_channels"]


@dataclass(frozen=True)
class GuestChannels:
    console_read: int  # ours: the monitor thread reads the console here
    console_write: int  # the kernel's stdout and stderr
    input_read: int  # the kernel's stdin
    agent: AgentClient | None  # the host side of the exec agent
    agent_fds: tuple[int, int] | None  # the guest's ends: (to guest, from guest)


def open_guest_channels(name: str, *, agent: bool, ours: list[int], theirs: list[int]) -> GuestChannels:
    """Open the pipes; every descriptor is in ``ours`` or ``theirs`` as soon as it exists."""
    cons_r, cons_w = os.pipe()
    ours.append(cons_r)
    theirs.append(cons_w)
    in_r, in_w = os.pipe()  # console input: held open, never written
    ours.append(in_w)
    theirs.append(in_r)
    client, agent_fds = None, None
    if agent:
        to_guest_r, to_guest_w = os.pipe()
        theirs.append(to_guest_r)
        from_guest_r, from_guest_w = os.pipe()
        theirs.append(from_guest_w)
        from .agent import AgentClient

        client = AgentClient(to_guest_w, from_guest_r, name=name)  # it owns these two
        agent_fds = (to_guest_r, from_guest_w)
    return GuestChannels(cons_r, cons_w, in_r, client, agent_fds)
