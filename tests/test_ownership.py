"""Owner files, the FIFO ledger and the sweep (stdpkt_lab.engine.ownership), no kernels."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from stdpkt_lab.engine import ownership as own


def _dead_identity() -> str:
    """``PID STARTTIME`` of a process that has ended."""
    child = subprocess.Popen(["sleep", "30"])
    ident = own.process_identity(child.pid)
    child.kill()
    child.wait()
    return ident


def test_owner_file_exists_before_the_directory_and_names_us(tmp_path: Path) -> None:
    run_dir = own.create_owned_dir(tmp_path, "stdpkt-x-")
    assert run_dir.is_dir() and run_dir.name.startswith("stdpkt-x-")
    assert own.owner_file(run_dir).read_text() == own.process_identity() + "\n"
    assert own.owners_alive(run_dir)
    own.remove_run_dir(run_dir)
    assert list(tmp_path.iterdir()) == []


def test_recycled_pid_is_not_the_owner(tmp_path: Path) -> None:
    run_dir = own.create_owned_dir(tmp_path, "stdpkt-x-")
    pid = os.getpid()
    own.owner_file(run_dir).write_text(f"{pid} 1\n")  # our pid, another start time
    assert not own.owners_alive(run_dir)


def test_sweep_removes_only_dirs_whose_owners_are_gone(tmp_path: Path) -> None:
    live = own.create_owned_dir(tmp_path, "stdpkt-live-")
    stale = own.create_owned_dir(tmp_path, "stdpkt-stale-")
    (stale / "mem").write_bytes(b"x" * 100)
    own.owner_file(stale).write_text(_dead_identity() + "\n")
    foreign = tmp_path / "stdpkt-tests-1"  # no owner file: never ours to sweep
    foreign.mkdir()
    # a Lab root whose creator is gone but whose instance's launcher still runs
    lab = own.create_owned_dir(tmp_path, "stdpkt-lab-")
    own.owner_file(lab).write_text(_dead_identity() + "\n")
    keeper = subprocess.Popen(["sleep", "30"])
    try:
        inner = own.create_owned_subdir(lab, "a")
        own.owner_file(inner).write_text(own.process_identity(keeper.pid) + "\n")
        removed = own.sweep([str(tmp_path)], force=True)
        assert removed == [stale]
        assert live.is_dir() and foreign.is_dir() and lab.is_dir()
        assert not own.owner_file(stale).exists()
    finally:
        keeper.kill()
        keeper.wait()
    assert own.sweep([str(tmp_path)], force=True) == [lab]  # now its last owner is gone too
    own.remove_run_dir(live)


def test_fifo_ledger_removes_only_the_fifo_we_made(tmp_path: Path) -> None:
    run_dir = own.create_owned_dir(tmp_path, "stdpkt-x-")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    os.mkfifo(theirs)
    assert own.make_fifo(str(ours), run_dir) is True
    assert own.make_fifo(str(theirs), run_dir) is False  # the neighbour's (or the user's)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("stdpkt-")) == [
        "ours", "theirs"]  # no temporary name left
    # someone replaces "ours" by a FIFO of their own (another inode): not ours any more
    os.mkfifo(tmp_path / "replacement")
    os.rename(tmp_path / "replacement", ours)
    own.remove_created(run_dir)
    assert ours.exists() and theirs.exists()
    os.unlink(ours)
    assert own.make_fifo(str(ours), run_dir) is True
    own.remove_run_dir(run_dir)
    assert not ours.exists() and theirs.exists()
    assert not own.created_file(run_dir).exists()
