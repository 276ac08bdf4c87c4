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
Each also carries ``hint``: one line on what to do next (a class default, or given
where it is raised).  It is attached as a PEP 678 note, so a plain Python
traceback and IPython/Jupyter both print it under the message while ``str(error)``
stays the message alone (what the CLI prints).
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
    """Base of every error stdpkt-lab raises on purpose; ``hint`` says what to do."""

    #: the one-line advice of this class (an instance may be given its own)
    default_hint = ""

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = self.default_hint if hint is None else hint
        if self.hint:
            self.add_note(f"hint: {self.hint}")


class ConfigError(StdpktError):
    """Bad user input, detected before any process starts."""

    default_hint = "fix the value the message names and try again (nothing was started)"


class VariableError(ConfigError):
    """A paper variable (``IF0``, ``IP0``, ...) is malformed."""

    default_hint = "`stdpkt run --help` describes IFn, IPn, NETMASKn, MTUn and GATEWAY"

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class ChainError(ConfigError):
    """A chain graph cannot be launched; ``node`` names the culprit when there is one."""

    default_hint = ("fix that attribute in the graph (g.nodes[node] / g.edges[a, b]) and make "
                    "the Lab again; nothing was started")

    def __init__(self, message: str, *, node: str | None = None, hint: str | None = None) -> None:
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node is not None else message, hint=hint)


class LabConfError(ChainError):
    """A Netkit/Kathará lab (lab.conf, lab.dep, a device folder) is malformed."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(where + message)


class LabFileError(ConfigError):
    """A lab file cannot be read or is malformed."""

    default_hint = "correct the lab file where the message says; save_lab(g, path) writes a valid one"


class EnvironmentProblem(StdpktError):
    """The host lacks something stdpkt-lab needs (a package, a program, a temp dir)."""

    default_hint = "`stdpkt check` says what this host lacks; `make setup` installs it"


class PcapError(StdpktError):
    """A pcap stream or file is malformed."""

    default_hint = "what feeds this pipe is not a pcap stream: `tcpdump -r FILE` shows what it is"


class InstanceError(StdpktError):
    """A network-function instance misbehaved."""

    default_hint = "the console tail says what the guest did; lab.restart(node) boots it again"

    def __init__(self, message: str, *, name: str | None = None, console_tail: str = "",
                 hint: str | None = None) -> None:
        self.name = name
        self.console_tail = console_tail
        text = f"instance {name!r}: {message}" if name else message
        if console_tail:
            text += "\n--- console tail ---\n" + console_tail.rstrip("\n")
        super().__init__(text, hint=hint)


class BootError(InstanceError):
    """A guest kernel failed to boot (the console tail says why)."""

    default_hint = ("read the console tail: a failing setup or script names its command; "
                    "`stdpkt check` tests the host")


class InstanceDied(InstanceError):
    """A guest ended while it was expected to be running."""

    default_hint = "lab.restart(node) boots a fresh instance of it; its console tail says why it ended"


class ExecError(InstanceError):
    """A command could not be run inside a guest (not the same as a non-zero exit status)."""

    default_hint = "check the command and that the instance runs (lab[node].state); the message has its stderr"


class ExecTimeout(ExecError):
    """A command inside a guest did not finish within its timeout."""

    default_hint = "pass a larger timeout=, or start the command in the background ('cmd &')"


class LinkError(StdpktError):
    """A link between two ports (its relay or its pipes) failed."""

    default_hint = "stop the lab (lab.stop()) and start a new one; lab.events lists what ended"


class StateError(StdpktError):
    """The object's lifecycle state forbids the operation (e.g. starting a stopped lab)."""

    default_hint = ("lab.state says where it is: start() a new Lab first; a stopped one cannot "
                    "run again, make another with sl.Lab(g)")
