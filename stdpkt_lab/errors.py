"""The one exception tree of stdpkt-lab.

Every error the library raises on purpose is a :class:`StdpktError`::

    StdpktError
    ├── ConfigError            bad user input, found before anything starts
    │   ├── VariableError      a paper variable (IFn, IPn, NETMASKn, MTUn, GATEWAY) is malformed
    │   ├── ChainError         a chain graph is invalid (unknown kind, missing parameter, bad shape)
    │   │   └── LabConfError   a Netkit/Kathará lab folder is malformed (names file and line)
    │   └── LabFileError       a lab file cannot be read or is malformed
    ├── EnvironmentProblem     the host lacks something (linux.uml, a package, a writable temp dir)
    ├── PcapError              a pcap stream or file is malformed
    ├── InstanceError          a running instance misbehaved
    │   ├── BootError          a guest failed to boot; carries the console tail
    │   ├── InstanceDied       a guest ended while it was expected to run
    │   └── ExecError          running a command in a guest failed (not a non-zero exit)
    │       └── ExecTimeout    the command did not finish in time
    ├── LinkError              a link (relay between two ports) failed
    └── StateError             an operation that the object's lifecycle state forbids

Errors carry context as attributes (``node``, ``variable``, ``console_tail``) and
their message names what was wrong, so that a one-line print is enough for a user.
"""

from __future__ import annotations

__all__ = [
    "StdpktError",
    "ConfigError",
    "VariableError",
    "ChainError",
    "LabFileError",
    "LabConfError",
    "EnvironmentProblem",
    "PcapError",
    "InstanceError",
    "BootError",
    "InstanceDied",
    "ExecError",
    "ExecTimeout",
    "LinkError",
    "StateError",
]


class StdpktError(Exception):
    """Base of every error stdpkt-lab raises on purpose."""


class ConfigError(StdpktError):
    """Bad user input, detected before any process starts."""


class VariableError(ConfigError):
    """A paper variable (``IF0``, ``IP0``, ...) is malformed."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class ChainError(ConfigError):
    """A chain graph cannot be launched; ``node`` names the culprit when there is one."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node is not None else message)


class LabConfError(ChainError):
    """A Netkit/Kathará lab (lab.conf, lab.dep, a device folder) is malformed."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(where + message)


class LabFileError(ConfigError):
    """A lab file cannot be read or is malformed."""


class EnvironmentProblem(StdpktError):
    """The host lacks something stdpkt-lab needs (a package, a program, a temp dir)."""


class PcapError(StdpktError):
    """A pcap stream or file is malformed."""


class InstanceError(StdpktError):
    """A network-function instance misbehaved."""

    def __init__(self, message: str, *, name: str | None = None, console_tail: str = "") -> None:
        self.name = name
        self.console_tail = console_tail
        text = f"instance {name!r}: {message}" if name else message
        if console_tail:
            text += "\n--- console tail ---\n" + console_tail.rstrip("\n")
        super().__init__(text)


class BootError(InstanceError):
    """A guest kernel failed to boot (the console tail says why)."""


class InstanceDied(InstanceError):
    """A guest ended while it was expected to be running."""


class ExecError(InstanceError):
    """A command could not be run inside a guest (not the same as a non-zero exit status)."""


class ExecTimeout(ExecError):
    """A command inside a guest did not finish within its timeout."""


class LinkError(StdpktError):
    """A link between two ports (its relay or its pipes) failed."""


class StateError(StdpktError):
    """The object's lifecycle state forbids the operation (e.g. starting a stopped lab)."""
