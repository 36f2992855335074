"""One writer per output folder, and SIGTERM handled like Ctrl-C.

The lock is an advisory `flock` on a hidden file beside the output (`.<name>.prunecomp-lock`),
taken before any expensive work. The kernel drops it when the holder dies, even by SIGKILL, so a
crash never leaves the output locked; the zero-byte file it leaves is taken over and removed by
the next run. Holding the lock also proves that leftover temporary folders of the same output
belong to dead runs, which is what lets `io` delete them safely.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import threading
from pathlib import Path

from .errors import OutputError, OutputLocked, Terminated

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: locking is skipped, the other checks still run
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".prunecomp-lock"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _missing_parents(folder: Path) -> list[Path]:
    """The ancestors of `folder` (itself included) that do not exist yet, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    return missing


class OutputLock:
    """An exclusive lock on one output folder for the lifetime of a run."""

    def __init__(self, out: Path):
        self.out = out
        self.path = lock_path(out)
        self._fd: int | None = None
        self._created: list[Path] = []  # parent folders we made, removed again if left empty

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "OutputLock":
        if self.held:
            return self
        self._make_parent()
        while True:
            fd = self._open()
            if fcntl is None:  # pragma: no cover
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                holder = _read_pid(fd)
                os.close(fd)
                self._remove_created()
                raise OutputLocked(
                    f"{self.out} is being written by another prunecomp run{f' (pid {holder})' if holder else ''}; "
                    "wait for it to finish or choose another --out"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous holder removed the file between our open and our flock: retry
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlink while still holding it, so no one locks a file we then delete
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _make_parent(self) -> None:
        parent = self.out.parent
        missing = _missing_parents(parent)
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output's parent folder {parent}: {exc.strerror or exc}") from None
        self._created = missing

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._remove_created()
            reason = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else (exc.strerror or str(exc))
            raise OutputError(f"cannot write to {self.out.parent} ({reason}); choose a writable --out") from None

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first; stops at the first folder that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


_HELD: dict[Path, OutputLock] = {}
_HELD_GUARD = threading.Lock()


def acquire_output_lock(out: str | Path) -> OutputLock:
    """Lock `out` for this process (re-entrant: a second call from the same process is a no-op)."""
    out = Path(out).expanduser().resolve()
    with _HELD_GUARD:
        lock = _HELD.get(out)
        if lock is None or not lock.held:
            lock = OutputLock(out).acquire()
            _HELD[out] = lock
        return lock


def is_locked_here(out: str | Path) -> bool:
    lock = _HELD.get(Path(out).expanduser().resolve())
    return lock is not None and lock.held


def release_output_lock(out: str | Path) -> None:
    with _HELD_GUARD:
        lock = _HELD.pop(Path(out).expanduser().resolve(), None)
    if lock is not None:
        lock.release()


def release_all() -> None:
    """Release every lock this process holds (also registered with atexit)."""
    with _HELD_GUARD:
        locks = list(_HELD.values())
        _HELD.clear()
    for lock in locks:
        lock.release()


atexit.register(release_all)


def _raise_terminated(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise `Terminated` (a KeyboardInterrupt) so cleanup runs as for Ctrl-C.

    Only possible in the main thread; returns whether it was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises `Terminated`; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
