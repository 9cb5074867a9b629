"""One writer per run folder: an OS lock (fcntl.flock) on a lock file naming its holder's PID and task."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".emojidiff.lock"
ENV = "EMOJIDIFF_HELD_LOCKS"  # folders locked by this process or a parent (e.g. the runner for its notebooks)


class RunLocked(RuntimeError):
    """Another process is writing into this run folder."""


_held: dict[Path, int] = {}  # folder -> depth of nested holds in this process


def _inherited() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p]


def _covered(folder: Path) -> bool:
    """True when this process, or the parent that started it, already holds this folder or one above it."""
    return any(folder == h or h in folder.parents for h in [*_held, *_inherited()])


def holder(folder: str | Path) -> str:
    """The '<pid> <task>' recorded in a folder's lock file ('' when none)."""
    try:
        return (Path(folder) / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def run_lock(folder: str | Path, task: str = "training"):
    """Hold the folder's lock while writing into it; a second process fails at once naming the folder and PID.

    The OS drops a flock when its process dies, so a lock left by a killed run never blocks. Nested holds in one
    process, and child processes of the holder (they inherit EMOJIDIFF_HELD_LOCKS), pass through.
    """
    folder = Path(folder).resolve()
    if _covered(folder):
        _held[folder] = _held.get(folder, 0) + 1
        try:
            yield folder
        finally:
            _release_count(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid, _, what = holder(folder).partition(" ")
        raise RunLocked(f"{folder}: {what or 'another run'} is running elsewhere (process {pid or '?'} holds "
                        f"{LOCK_NAME}); wait for it to finish or stop it, then retry") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {task}\n".encode(), 0)
    _held[folder] = 1
    _publish([*_inherited(), *_held])
    try:
        yield folder
    finally:
        _release_count(folder)
        if folder not in _held:
            _publish([p for p in _inherited() if p != folder])
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _publish(folders: list[Path]) -> None:
    """Tell child processes which folders are held for them (os.environ is what they inherit)."""
    if folders:
        os.environ[ENV] = os.pathsep.join(sorted({str(p) for p in folders}))
    else:
        os.environ.pop(ENV, None)


def _release_count(folder: Path) -> None:
    _held[folder] -= 1
    if not _held[folder]:
        del _held[folder]
