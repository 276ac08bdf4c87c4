"""One network-function instance: a User-Mode Linux kernel in its own process group.

An :class:`Instance` runs a kernel; its ports are the host ends of
SOCK_SEQPACKET socketpairs (one frame per message), which relays connect to
pipes or to other instances.  Lifecycle::

    CREATED --start()--> BOOTING --wait_ready()--> RUNNING --stop()--> STOPPED
                            |                        |
                            +--> FAILED              +--> EXITED (kernel ended on its own)

The constructor does no I/O; :meth:`start` spawns; :meth:`stop` is idempotent
and removes every process, descriptor and file the instance made.

Ownership (see :mod:`stdpkt_lab.engine.ownership`): the run directory has an
owner file naming this process and the instance's launcher (``stdpkt-launch``);
the launcher supervises the kernel, which runs in a session of its own, and
removes the run directory if this process dies. :meth:`stop` signals by pid,
never by process group: SIGUSR1 to the launcher, after a timeout SIGKILL to
every descendant, and if the launcher itself was killed, to every process
still marked with the run directory (``TMPDIR``).

A *pooled* instance (``pooled=True``, see :mod:`stdpkt_lab.engine.pool`) boots
with a blank spec (ports only) and waits in BOOTING (:meth:`wait_pooled`) until
:meth:`configure` hands it its real spec; it then goes on as any other.
"""

from __future__ import annotations

import collections
import enum
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BootError, ConfigError, EnvironmentProblem, InstanceDied, StateError
from . import bootprofile, quota
from ._spawn import spawn
from .confine import Confinement, choose_confinement
from .console import Marker, death_reason, keep_in_tail, read_console, worth_showing
from .cpus import claim_core
from .guest_channels import open_guest_channels
from .guest_files import guest_init, guest_view, write_guest_files
from .mconsole import MConsole
from .ownership import add_owner, create_owned_subdir, remove_run_dir
from .paths import kernel_binary, make_run_root
from .port_ends import open_port_ends
from .spec import InstanceSpec, pool_mismatch
from .teardown import close_quietly, end_processes
from .vhost import VhostPort

if TYPE_CHECKING:
    from .agent import AgentClient, ExecResult

__all__ = ["Instance", "InstanceState"]

class InstanceState(enum.Enum):
    CREATED = "created"
    BOOTING = "booting"
    RUNNING = "running"
    EXITED = "exited"
    STOPPED = "stopped"
    FAILED = "failed"


class Instance:
    """A booted (or booting) UML kernel running one network function."""

    def __init__(
        self,
        spec: InstanceSpec,
        *,
        run_root: Path | None = None,
        on_console: Callable[[str], None] | None = None,
        confinement: Confinement | None = None,
        console_lines: int = 200,
        pooled: bool = False,
    ) -> None:
        self.spec = spec
        self._umid = spec.name  # the kernel's name for good (a pooled one gets a new spec later)
        self._pooled = pooled
        self._pooled_evt = threading.Event()
        self._configured = False
        self._run_root = run_root
        self._on_console = on_console
        self._confinement = confinement
        self._tail: collections.deque[str] = collections.deque(maxlen=console_lines)
        self._state = InstanceState.CREATED
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._owns_run_dir = False
        self._host_ports: list[socket.socket | None] = []
        self._vhost: dict[int, VhostPort] = {}
        self._fds: list[int] = []  # our ends: console read, console input write
        self._agent: AgentClient | None = None
        self._mconsole: MConsole | None = None
        self._monitor: threading.Thread | None = None
        self._fail_reason: str | None = None
        self.script_status: int | None = None
        self.boot_started: float | None = None
        self.boot_seconds: float | None = None
        self._quota: quota.Claim | None = None  # per-user cap (engine/quota.py)
        self._boot_ipv6 = spec.ipv6  # what the kernel command line set (a pooled one keeps it)
        #: the core this instance's kernel and guest processes run on (None: not pinned)
        self.cpu: int | None = None

    # ---------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> InstanceState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir

    @property
    def mconsole_path(self) -> Path | None:
        return self._run_dir / self._umid / "mconsole" if self._run_dir else None

    def port(self, index: int) -> socket.socket:
        """Host end of port ``index``'s socketpair (one frame per message)."""
        if not self._host_ports:
            raise StateError(f"instance {self.name!r} is {self._state.value}: no ports yet")
        sock = self._host_ports[index]
        if sock is None:
            raise StateError(
                f"instance {self.name!r}: eth{index} has no host end (a tap device or the caller's fd)"
            )
        return sock

    def vhost_ports(self) -> dict[int, VhostPort]:
        """The vhost-user back ends of this instance's ports, by port index."""
        return dict(self._vhost)

    def vhost(self, index: int) -> VhostPort:
        """The vhost-user back end of port ``index`` (booted with ``PortSpec(vhost=True)``)."""
        try:
            return self._vhost[index]
        except KeyError:
            raise StateError(f"instance {self.name!r}: eth{index} is not a vhost-user port") from None

    @property
    def mconsole(self) -> MConsole:
        """The kernel's management console (reads guest /proc/sys files; nothing runs in the guest)."""
        if self._mconsole is None:
            path = self.mconsole_path
            if path is None:
                raise StateError(f"instance {self.name!r} is {self._state.value}: no mconsole yet")
            self._mconsole = MConsole(path, name=self.name)
        return self._mconsole

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def __repr__(self) -> str:
        return f"<Instance {self.name} {self._state.value} pid={self.pid}>"

    def _repr_html_(self) -> str:
        from .instance_view import instance_html

        return instance_html(self)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Spawn the kernel (returns at once; :meth:`wait_ready` waits for the boot)."""
        with self._lock:
            if self._state is not InstanceState.CREATED:
                raise StateError(f"instance {self.name!r} is {self._state.value}; start() needs created")
            self._state = InstanceState.BOOTING
        try:
            self._quota = quota.claim(self.spec.name, self.spec.mem_mb)  # raises QuotaExceeded
            self._spawn()
        except BaseException:
            self._state = InstanceState.FAILED
            self._teardown()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the guest has configured its interfaces (and its agent answers)."""
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self._exited.is_set():
                self._state = InstanceState.FAILED
                reason = self._fail_reason or "kernel exited during boot"
                self._teardown()
                raise BootError(reason, name=self.name, console_tail=self.console_tail())
            if time.monotonic() >= deadline:
                self._state = InstanceState.FAILED
                self._teardown()
                raise BootError(
                    f"no sign of life {timeout:.0f} s after start",
                    name=self.name,
                    console_tail=self.console_tail(),
                )
            self._ready.wait(0.05)
        if self._agent is not None:
            try:
                self._agent.wait_ready(max(deadline - time.monotonic(), 1.0))
            except Exception as exc:
                self._state = InstanceState.FAILED
                self._teardown()
                raise BootError(
                    f"exec agent did not start: {exc}", name=self.name, console_tail=self.console_tail()
                ) from exc
        with self._lock:
            if self._state is InstanceState.BOOTING:
                self._state = InstanceState.RUNNING

    def wait_pooled(self, timeout: float = 60.0) -> None:
        """Block until a pooled instance waits for its configuration (:meth:`configure`)."""
        if not self._pooled:
            raise StateError(f"instance {self.name!r} is not pooled")
        deadline = time.monotonic() + timeout
        while not self._pooled_evt.wait(0.05):
            if self._exited.is_set() or time.monotonic() >= deadline:
                self._state = InstanceState.FAILED
                why = self._fail_reason or ("kernel exited during boot" if self._exited.is_set()
                                            else f"not pooled {timeout:.0f} s after start")
                self._teardown()
                raise BootError(why, name=self.name, console_tail=self.console_tail())

    @property
    def waiting_for_config(self) -> bool:
        """True while a pooled instance waits for :meth:`configure`."""
        return self._pooled_evt.is_set() and not self._configured and not self._exited.is_set()

    def configure(self, spec: InstanceSpec) -> None:
        """Hand a pooled instance its configuration; returns at once (:meth:`wait_ready`).

        ``spec`` must have the ports the instance booted with (same number and
        MTUs: the kernel fixed them), the same memory and agent setting; its
        name becomes the hostname (the kernel keeps its umid).  Everything
        else (addresses, routes, hosts, setup, script, env) is ``spec``'s.
        """
        with self._lock:
            if not self._pooled or self._configured:
                raise StateError(f"instance {self.name!r}: configure() needs a pooled, unconfigured instance")
            if not self.waiting_for_config or self._state is not InstanceState.BOOTING:
                raise StateError(f"instance {self.name!r} is not waiting for a configuration")
            blank = self.spec
            mismatch = pool_mismatch(blank, spec)
            if mismatch:
                raise ConfigError(f"instance {spec.name!r} does not fit pooled {blank.name!r}: {mismatch}")
            self._configured = True
            self.spec = spec
        assert self._run_dir is not None and self._confinement is not None
        _init, conf = self._write_guest_files(self._run_dir, self._confinement, conf_name="config.env")
        self._confinement.prepare_run_dir(self._run_dir)
        self.boot_started = time.monotonic()
        os.write(self._fds[1], f"CONF {Path(conf).name}\n".encode())

    def boot(self, timeout: float = 60.0) -> Instance:
        """:meth:`start` then :meth:`wait_ready`."""
        self.start()
        self.wait_ready(timeout)
        return self

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the kernel to end by itself; return the script's exit status if known."""
        if not self._exited.wait(timeout):
            return None
        return self.script_status if self.script_status is not None else self.returncode

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def ready(self) -> bool:
        """True once the guest has configured its interfaces."""
        return self._ready.is_set()

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """End the kernel and remove everything the instance made. Idempotent."""
        with self._lock:
            if self._state in (InstanceState.STOPPED, InstanceState.CREATED):
                self._state = InstanceState.STOPPED
                return
            if self._state is not InstanceState.FAILED:
                self._state = (
                    InstanceState.EXITED if self._exited.is_set() else InstanceState.STOPPED
                )
        self._teardown(timeout)

    def __enter__(self) -> Instance:
        if self._state is InstanceState.CREATED:
            self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- commands
    def exec(
        self, cmd: str | Sequence[str], *, timeout: float | None = 30.0, input: bytes | None = None
    ) -> ExecResult:
        """Run ``cmd`` inside the guest (a string goes through /bin/sh -c)."""
        agent = self._require_agent()
        try:
            return agent.exec(cmd, timeout=timeout, input=input)
        except InstanceDied as exc:
            raise self._died(exc) from exc

    def guest_path(self, path: str | Path) -> str:
        """Where this guest sees the host file ``path`` (a program to run in it, say): the path
        itself, or a copy in the instance's run directory when the guest's own mounts hide it
        (a checkout under /tmp or /root) or the kernel's user could not read it."""
        if self._run_dir is None or self._confinement is None:
            raise StateError(f"instance {self.name!r} is not started")
        return guest_view(path, self._run_dir, self._confinement)

    def read_file(self, path: str, *, timeout: float = 5.0) -> bytes:
        """Read a guest file without starting a process in the guest."""
        agent = self._require_agent()
        try:
            return agent.read_file(path, timeout=timeout)
        except InstanceDied as exc:
            raise self._died(exc) from exc

    @property
    def death_reason(self) -> str | None:
        """Why the kernel ended, when its console says (full run directory, panic)."""
        return death_reason(list(self._tail), self._run_dir)

    def _died(self, exc: InstanceDied) -> InstanceDied:
        """``exc`` with the reason the console gives, once the kernel has ended (<= 2 s)."""
        self._exited.wait(2.0)
        reason = self.death_reason
        if reason is None:
            return exc
        return InstanceDied(reason, name=self.name, console_tail=self.console_tail())

    @property
    def agent(self) -> AgentClient:
        return self._require_agent()

    def _require_agent(self) -> AgentClient:
        if self._agent is None or self._state is not InstanceState.RUNNING:
            if self._exited.is_set():
                raise InstanceDied("the kernel has ended", name=self.name, console_tail=self.console_tail())
            raise StateError(f"instance {self.name!r} is {self._state.value}: no exec channel")
        return self._agent

    # ---------------------------------------------------------------- internals
    def _spawn(self) -> None:
        spec = self.spec
        confinement = self._confinement = self._confinement or choose_confinement()
        if self._pooled and not guest_init().endswith("stdpkt-init"):
            raise EnvironmentProblem("a pooled instance needs the C guest init (stdpkt-init), "
                                     "not STDPKT_INIT=shell")
        if self._run_root is not None:
            run_dir = create_owned_subdir(self._run_root, spec.name)
        else:
            run_dir = make_run_root(prefix=f"stdpkt-{spec.name}-")
        self._run_dir = run_dir
        self._owns_run_dir = True

        guest_fds: list[int] = []
        try:
            ports = open_port_ends(spec.ports, run_dir, host_ends=self._host_ports,
                                   vhost=self._vhost, guest_fds=guest_fds)
            channels = open_guest_channels(spec.name, agent=spec.agent, ours=self._fds, theirs=guest_fds)
            cons_r, cons_w, in_r = channels.console_read, channels.console_write, channels.input_read
            self._agent, agent_fds = channels.agent, channels.agent_fds

            init, conf = self._write_guest_files(run_dir, confinement)
            confinement.prepare_run_dir(run_dir)
            args = bootprofile.kernel_args(
                mem_mb=spec.mem_mb,
                init=init,
                console=(0, 1),
                agent=agent_fds,
                ports=ports,
                uml_dir=str(run_dir),
                umid=spec.name,
                extra=[f"STDPKT_CONF={conf}"],
                ipv6=spec.ipv6,
            )
            core = claim_core()  # one core for the kernel and its processes (engine/cpus.py)
            cpu_lock = -1
            self.cpu = None if core is None else core.cpu  # a restart chooses again
            if core is not None:
                cpu_lock, core.fd = core.fd, -1
                if cpu_lock >= 0:
                    guest_fds.append(cpu_lock)  # the launcher holds it; ours is closed below
            argv = [*confinement.launcher_argv(run_dir, parent_pid=os.getpid(), cpu=self.cpu,
                                               cpu_lock=cpu_lock),
                    kernel_binary(), *args]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("IF", "IP", "NETMASK"))}
            env["TMPDIR"] = str(run_dir)
            self.boot_started = time.monotonic()
            self._proc = spawn(
                argv,
                stdin=in_r,
                stdout=cons_w,
                stderr=cons_w,
                pass_fds=[fd for fd in guest_fds if fd not in (in_r, cons_w)],
                start_new_session=True,
                env=env,
                close_fds=True,
                # the kernel's working directory: vhost-user ports are named relative to
                # it (a unix socket's path must stay under 108 bytes, the run directory's
                # may not), and a core dump lands where the run directory's owner removes it
                cwd=run_dir,
            )
            add_owner(run_dir, self._proc.pid)  # it removes run_dir if we are killed
        finally:
            for fd in guest_fds:
                os.close(fd)
        self._monitor = threading.Thread(
            target=self._watch_console, args=(cons_r,), name=f"stdpkt-console-{spec.name}", daemon=True
        )
        self._monitor.start()

    def _write_guest_files(
        self, run_dir: Path, confinement: Confinement, conf_name: str = "guest.env"
    ) -> tuple[str, str]:
        return write_guest_files(self.spec, run_dir, confinement, conf_name=conf_name,
                                 boot_ipv6=self._boot_ipv6,
                                 pooled_blank=self._pooled and not self._configured)

    def _watch_console(self, fd: int) -> None:
        for line in read_console(fd):
            if isinstance(line, Marker):
                self._on_marker(line.text)
                continue
            if keep_in_tail(line):
                self._tail.append(line)
            if self._on_console is not None and worth_showing(line):
                self._on_console(line)
        proc = self._proc
        if proc is not None:
            proc.wait()
        if self._agent is not None:
            self._agent.close()
        self._exited.set()

    def _on_marker(self, text: str) -> None:
        word, _, rest = text.partition(" ")
        if word == "POOLED":
            self._pooled_evt.set()
        elif word == "READY":
            if self.boot_started is not None:
                self.boot_seconds = time.monotonic() - self.boot_started
            self._ready.set()
        elif word == "SCRIPT-EXIT":
            try:
                self.script_status = int(rest)
            except ValueError:
                self.script_status = 255
        elif word == "FAIL":
            self._fail_reason = rest
            self._tail.append(f"guest init: {rest}")
        elif word == "AGENT-EXIT":  # the guest init reaped the agent: its calls cannot end
            self._tail.append(f"guest init: the exec agent exited ({rest})")
            if self._agent is not None:
                self._agent.agent_exited(rest)
        elif word == "WARN":
            self._tail.append(f"guest init: {rest}")
            if self._on_console is not None:
                self._on_console(f"stdpkt: {self.name}: {rest}")

    def _teardown(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None and self._vhost:
            for vport in self._vhost.values():  # the guest removes its virtio devices first
                vport.detach(timeout=1.0)
        if proc is not None:
            end_processes(proc, self._run_dir, timeout)
        if self._agent is not None:
            self._agent.close()
        if self._mconsole is not None:
            self._mconsole.close()
        for sock in self._host_ports:
            if sock is not None:
                sock.close()
        for vport in self._vhost.values():  # after the kernel: it maps the guest's memory
            vport.close()
        for fd in self._fds[1:]:  # fds[0] (console) is closed by the monitor thread
            close_quietly(fd)
        self._fds[1:] = []
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout)
        elif proc is None and self._fds:
            close_quietly(self._fds[0])  # no kernel, so no monitor: ours to close, once
            self._fds = []  # a FAILED instance is torn down again by stop(): never twice
        self._exited.set()
        if self._run_dir is not None and self._owns_run_dir:
            remove_run_dir(self._run_dir)
            self._owns_run_dir = False
        if self._quota is not None:
            self._quota.release()
