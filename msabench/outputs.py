"""Writing output files safely: one error type for a failed write, atomic files, stale temporary files.

Every command that writes (``run``, ``tune``, ``leaderboard --out``, ``plot``, ...) writes through
:func:`atomic_write` or wraps its writes in :func:`writing`; a failure (no space, no permission, read-only file
system, quota, any ``OSError``) becomes :class:`WriteFailed`, which the command line prints as one line naming
the path, the cause and what to do, with exit status 1. A temporary file is named
``.<name>.tmp-<host>-<pid>`` next to its target, removed when the write fails, and removed by the next command
writing to that directory once its process is gone (:func:`clean_stale_temps`).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_MARK = ".tmp-"  # .<name>.tmp-<host>-<pid>: the atomic-write temporary of <name>
STALE_OTHER_HOST_S = 24 * 3600  # a temporary of another host (shared file system) is removed only after this long
STALE_PID_ONLY_S = 600  # names with a pid but no host (older versions, CorrKD's cache): dead pid and this old

# what to do, per cause; {flag} is the option that picks the output location
ADVICE = {
    errno.ENOSPC: "free space on that file system or choose another {flag}",
    errno.EDQUOT: "free space within your disk quota or choose another {flag}",
    errno.EACCES: "fix the permissions of that directory or choose another {flag}",
    errno.EPERM: "fix the permissions of that directory or choose another {flag}",
    errno.EROFS: "the file system is read-only: choose another {flag}",
}
WRITE_ERRNOS = frozenset(ADVICE)


class WriteFailed(OSError):
    """An output file could not be written; ``str()`` is the one-line message for the user."""

    def __init__(self, path: str | os.PathLike, cause: OSError, flag: str = "--out", note: str = "") -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = str(path)
        self.cause = cause
        self.flag = flag
        self.note = note

    def __str__(self) -> str:
        return describe(self.path, self.cause, self.flag) + (f". {self.note}" if self.note else "")


def describe(path: str | os.PathLike | None, exc: OSError, flag: str = "--out", verb: str = "write") -> str:
    """``cannot write PATH: CAUSE (ERRNO); WHAT TO DO`` (``path`` None: the exception's file name)."""
    code = errno.errorcode.get(exc.errno or 0, "")
    cause = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    advice = ADVICE.get(exc.errno or -1, "check that directory or choose another {flag}").format(flag=flag)
    where = path if path is not None else (exc.filename or "an output file")
    return f"cannot {verb} {where}: {cause}{f' ({code})' if code else ''}; {advice}"


@contextmanager
def writing(path: str | os.PathLike, flag: str = "--out", error: type[WriteFailed] = WriteFailed) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into ``error`` (a :class:`WriteFailed`) naming ``path``."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as exc:
        raise error(path, exc, flag) from exc


# what SQLite (through SQLAlchemy, as Optuna's storage) says instead of an errno
DATABASE_WRITE_ERRORS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
    "unable to open database file": errno.EACCES,
}


def database_write_failure(exc: BaseException) -> str | None:
    """The one-line message for a tuning storage that could not be written (a full disk under ``optuna.db``, a
    read-only one), found anywhere in ``exc``'s chain (SQLAlchemy keeps the driver's error in ``.orig``); else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e).lower()
        for needle, code in DATABASE_WRITE_ERRORS.items():
            if needle in text:
                cause = OSError(code, os.strerror(code))
                return describe("the tuning storage (--storage, default OUT/optuna.db)", cause, flag="--out or --storage")
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return None


def host_tag() -> str:
    """This machine's name without ``-`` (the separator in temporary names)."""
    return socket.gethostname().replace("-", "_") or "host"


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling of ``path`` written by this process."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{host_tag()}-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], flag: str = "--out",
                 error: type[WriteFailed] = WriteFailed) -> Path:
    """Call ``write(tmp)`` then rename ``tmp`` onto ``path``: readers see the old file or the new one. On any
    failure (or Ctrl-C) the temporary is removed; an ``OSError`` becomes :class:`WriteFailed`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with writing(path, flag, error):
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, flag: str = "--out") -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), flag)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a reused id counts as alive: the safe side)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_gone(host: str, pid_text: str, path: Path, now: float | None = None,
                  other_host_s: float = STALE_OTHER_HOST_S) -> bool:
    """A temporary written by ``host``/``pid`` is stale when that process has ended (same host), or it is
    older than ``other_host_s`` (another host, whose processes cannot be seen from here)."""
    if host == host_tag():
        try:
            return not pid_alive(int(pid_text))
        except ValueError:
            return True
    return _age(path, now) > other_host_s


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file of ours whose writer has gone: ``.<name>.tmp-<host>-<pid>``, or the
    pid-only names ``.results-<pid>.csv|parquet``, ``.<name>.<pid>.tmp`` (tune) and ``<name>.<pid>.partial``
    (CorrKD's cache), which count only once their pid is gone here and they are a few minutes old."""
    name = path.name
    if name.startswith(".") and TMP_MARK in name[1:]:
        head, _, owner = name[1:].rpartition(TMP_MARK)
        host, sep, pid = owner.rpartition("-")
        if head and sep and pid.isdigit():
            return owner_is_gone(host, pid, path, now)
    pid = _pid_only(name)
    if pid is None:
        return False
    age = _age(path, now)
    return age > STALE_OTHER_HOST_S or (age > STALE_PID_ONLY_S and not pid_alive(pid))


def _pid_only(name: str) -> int | None:
    parts = name.split(".")
    if name.startswith(".results-") and len(parts) == 3 and parts[2] in ("csv", "parquet"):
        text = parts[1][len("results-"):]
    elif name.startswith(".") and name.endswith(".tmp") and len(parts) >= 4:
        text = parts[-2]
    elif name.endswith(".partial") and len(parts) >= 3:
        text = parts[-2]
    else:
        return None
    return int(text) if text.isdigit() else None


def clean_stale_temps(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove temporary files in ``directory`` (and below, with ``recursive``) whose writing process has
    ended; never fails (a directory that cannot be read or cleaned is left as it is). Returns what went."""
    root = Path(directory)
    removed: list[Path] = []
    try:
        candidates = list(root.rglob("*") if recursive else root.iterdir())
    except OSError:
        return removed
    for path in candidates:
        try:
            if path.is_file() and is_stale_temp(path):
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def _age(path: Path, now: float | None) -> float:
    try:
        return (now or time.time()) - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    try:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass
