"""Files written whole or not at all: a temporary beside the target, renamed over it.

:func:`write` creates ``.NAME.HOST-PID.RANDOM.tmp`` in the target's folder (a hash of
the host name and the writer's process id), writes and fsyncs it, lets the caller
verify it, and only then renames it over the target with ``os.replace``: a write that
fails at any point leaves the previous file intact and removes its temporary. One left
by a writer that was killed is removed by the next write or read of NAME once that
writer is gone (:func:`remove_stale_temporaries`). Checkpoints and IDX files use it.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import secrets
import socket
import time
import zlib
from collections.abc import Callable
from typing import BinaryIO

HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"  # in temporary files' names
STALE_AFTER_S = 3600  # a temporary of another host (or without a PID) untouched this long


def os_error(like: OSError, message: str) -> OSError:
    """``message`` as an error of ``like``'s class and errno, so ``except`` still matches."""
    err = type(like)(message)
    err.errno = like.errno
    return err


def refuse_directory(fn: str, path: pathlib.Path, example: str, what: str = "a file") -> None:
    """IsADirectoryError naming ``fn`` if ``path`` is a folder, suggesting ``path/example``."""
    if path.is_dir():
        raise IsADirectoryError(
            f"{fn}: '{path}' is a directory, not {what}; pass a file path such as '{path / example}'"
        )


def remove_stale_temporaries(path: pathlib.Path) -> None:
    """Remove the temporaries that killed writes to ``path`` left beside it.

    One is stale if its writer ran on this host and that process is gone; one of
    another host, or without a writer's name (``.NAME.RANDOM.tmp``, an older funcprop),
    once it has not been modified for an hour. The temporary of a live writer on this
    host is never removed. Best effort: what cannot be listed or removed is left.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:([0-9a-f]{{8}})-(\d+)\.)?[0-9a-f]{{12}}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for match in filter(None, map(pattern.fullmatch, names)):
        tmp = path.parent / match[0]
        try:
            if match[1] == HOST and os.name == "posix":  # signal 0 only probes on POSIX
                try:
                    os.kill(int(match[2]), 0)
                    continue  # the writer is alive
                except ProcessLookupError:
                    pass
            elif time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
                continue
            tmp.unlink()
        except (OSError, OverflowError):  # kill's EPERM: alive (another user's); or gone
            pass


def check_target(fn: str, path: pathlib.Path, example: str, what: str = "a file") -> None:
    """Before any work: ``path`` is not a folder, its folder exists, and it is not read-only."""
    refuse_directory(fn, path, example, what)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{fn}: the directory '{path.parent}' of '{path}' does not exist; create it first")
    # os.replace would replace a read-only file (the folder's mode decides); root's
    # os.access allows everything, hence the mode bits as well.
    if path.exists() and not (path.stat().st_mode & 0o222 and os.access(path, os.W_OK)):
        raise PermissionError(
            f"{fn}: '{path}' is read-only, so it was not replaced (it is kept as it is); "
            f"make it writable (chmod u+w) or choose another path"
        )


def write(
    fn: str,
    path,
    fill: Callable[[BinaryIO], None],
    *,
    verify: Callable[[pathlib.Path], None] | None = None,
    example: str = "file",
    what: str = "a file",
) -> pathlib.Path:
    """Write ``path`` atomically: ``fill(f)`` writes the bytes into an open temporary,
    ``verify(tmp)`` may read it back (raising to abandon the write); errors name ``fn``.

    Raises:
      IsADirectoryError, FileNotFoundError, PermissionError: the target is a folder, its
        folder is missing, or it or its folder is read-only; nothing is written.
      OSError: writing failed (a full disk: errno ENOSPC), of the original class and
        errno; the previous file is intact and the temporary removed.
    """
    path = pathlib.Path(path)
    check_target(fn, path, example, what)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{HOST}-{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise os_error(
            err,
            f"{fn}: cannot write '{path}': creating a file in its folder '{path.parent}' failed "
            f"({err.strerror}); make the folder writable or choose another path",
        ) from None
    try:
        with os.fdopen(fd, "w+b") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        full = err.errno == errno.ENOSPC
        raise os_error(
            err,
            (
                f"{fn}: writing '{path}' failed{': the disk is full' if full else ''} ({err}); the previous file (if any) "
                f"is intact and the temporary file was removed; {'free some space' if full else 'check the disk'} or "
                f"choose another path"
            ),
        ) from None
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: pathlib.Path) -> None:
    """Make the rename durable: fsync the folder where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
