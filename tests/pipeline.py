"""A shell pipeline of `stdpkt run` stages, built with Popen (no shell strings)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Pipeline:
    """stage0 | stage1 | ... ; each stage's stderr goes to <workdir>/<name>.err."""

    def __init__(self, stages: list[Stage], workdir: Path) -> None:
        self.stages = stages
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Pipeline:
        prev_stdout = subprocess.DEVNULL
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            err = open(self.workdir / f"{stage.name}.err", "wb")
            proc = subprocess.Popen(
                stage.argv,
                stdin=prev_stdout,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                stderr=err,
                env={**os.environ, **stage.env},
                cwd=self.workdir,
            )
            err.close()
            if prev_stdout is not subprocess.DEVNULL:
                prev_stdout.close()  # type: ignore[union-attr]
            prev_stdout = proc.stdout  # type: ignore[assignment]
            self.procs.append(proc)
        return self

    def wait(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stderr(self, name: str) -> str:
        return (self.workdir / f"{name}.err").read_text(errors="replace")

    def all_stderr(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{self.stderr(s.name)}" for s in self.stages)

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
