"""The run folder while a run writes to it: locked against a second run, and its metrics kept to
the steps the checkpoints hold.

Why: two runs on one experiment name wrote the same checkpoints and each save deleted the other's
temp files (issue 21, row 18); after a `kill -9`, the steps redone from the last checkpoint were
appended to metrics.jsonl a second time (row 15).

The lock is `fcntl.flock` on `<run>/.lock`, held from before the resume until the process exits;
the kernel drops it when the process dies, however it dies, so no stale lock outlives a crash. The
lock file names the holder's PID for the refusal message. A forked child (a DataLoader worker)
closes its inherited copy, so an orphaned worker cannot keep a dead run's folder locked.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from checkpoint import _pid_alive as pid_alive, write_text_atomic  # one liveness rule for temp files and locks

LOCK_NAME = ".lock"
# A holder that has exited but whose lock is still held is a forked child on its way out (it closes
# its copy at once, see _close_in_child); wait this long for it before refusing.
EXITED_HOLDER_WAIT_S = 10.0

_OPEN_LOCKS: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_OPEN_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _OPEN_LOCKS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunInUseError(RuntimeError):
    """Another live process holds the run folder's lock (exit code 2: choose another name or wait)."""


class RunFolder:
    """`with RunFolder(path):` creates the folder (parents too) and holds its lock until exit."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created = False
        self._fd: int | None = None

    def __enter__(self) -> "RunFolder":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_NAME
        deadline = time.monotonic() + EXITED_HOLDER_WAIT_S
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                pid = holder.get("pid")
                if isinstance(pid, int) and not pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                who = (f"process {pid} on {holder.get('host', '?')}, running since {holder.get('since', '?')}"
                       if pid else "another process")
                raise RunInUseError(
                    f"run folder {self.path} is in use by {who}: two runs on one folder would overwrite "
                    "each other's checkpoints; wait for it to finish, stop it, or choose another "
                    "--experiment_name") from None
            try:  # the holder we waited for may have removed the folder it had created (release)
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            self.path.mkdir(parents=True, exist_ok=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                                      since=datetime.datetime.now().isoformat(timespec="seconds"))).encode(), 0)
        self._fd = fd
        _OPEN_LOCKS.add(fd)

    def release(self) -> None:
        """Drop the lock; a folder this run created and left empty (it stopped before writing
        anything: bad data, a signal) is removed again."""
        if self._fd is None:
            return
        try:
            if self.created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
                (self.path / LOCK_NAME).unlink()
                self.path.rmdir()
        except OSError:
            pass
        _OPEN_LOCKS.discard(self._fd)
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The complete rows of a metrics.jsonl (a line torn by a kill mid-append is skipped)."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def trim_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep the rows of steps <= `step` (those the resumed checkpoint holds): the run logs the later
    ones again. Drops a line torn by a kill mid-append too. Rewrites the file atomically when
    something goes (kept lines byte for byte); returns the lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


class MetricsLog:
    """The run's metrics.jsonl (one JSON line per log step, appended) and, when asked for and
    installed, a TensorBoard writer of its float values. Opening it trims the rows after
    `start_step`: a resumed run logs those steps again."""

    def __init__(self, path: str | os.PathLike, start_step: int, tensorboard_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        trim_metrics(self.path, start_step)
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                return
            self.writer = SummaryWriter(str(tensorboard_dir))

    def append(self, line: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        for key, value in line.items() if self.writer else ():
            if isinstance(value, float):
                self.writer.add_scalar(f"train/{key}", value, line["step"])

    def restart(self, step: int) -> None:
        trim_metrics(self.path, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
