"""Atomic writes: a reader (or a kill at any moment) sees the old file or the new one, never half of one.

Every file the runner writes for a person or another process goes through here: submissions, results
tables, reports, checkpoints (`state.pt`). The bytes go to a temp name beside the target, are fsynced,
then renamed over it. New files get the mode the umask gives (as `open` would), not mkstemp's 0600.

    atomic_write_text("results/x/results.csv", text)
    with atomic_path("ckpt/state.pt") as temp: torch.save(state, temp)
    with atomic_directory("data/x", overwrite=True) as folder: ...   # a prepared data set
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends, the file written there is fsynced and
    renamed to `path`. On an exception the temp file is removed and `path` is untouched."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(temp)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())  # the rename must not land before the bytes do
        os.chmod(temp, _umask_mode())
        os.replace(temp, final)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temp, open(temp, "w", newline="") as fh:
        fh.write(text)
    return Path(path)


@contextmanager
def atomic_directory(out: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yield an empty folder beside `out` to fill; when the block ends it replaces `out` in one step
    (renameat2 RENAME_EXCHANGE where the file system has it), so a kill at any moment leaves the old
    folder or the new one. On an exception nothing is left behind, not even parents this call made.
    FileExistsError when `out` exists and not `overwrite`."""
    created: list[str] = []  # parents this call makes, removed again on failure
    tmp = None
    try:
        _make_parents(os.path.dirname(out), created)
        _sweep_killed(out)
        tmp = tempfile.mkdtemp(prefix=_temp_prefix(out, "tmp"), dir=os.path.dirname(out))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: Ray workers running as another user could not read it
        yield tmp
        _swap_in(tmp, out, overwrite)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):  # innermost first, and only while still empty
            try:
                os.rmdir(d)
            except OSError:
                break
        raise


def _make_parents(parent: str, created: list[str]) -> None:
    missing = []
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(missing):
        os.mkdir(d)
        created.append(d)


def _temp_prefix(out: str, kind: str) -> str:
    """`.OUT.tmp-<host>-<pid>-`: a later prepare can tell the leftovers of a killed one from live work."""
    return f".{os.path.basename(out)}.{kind}-{socket.gethostname()}-{os.getpid()}-"


def _sweep_killed(out: str) -> None:
    """Delete the temp folders a SIGKILLed prepare of `out` on this host left beside it (its pid is gone)."""
    parent = os.path.dirname(out)
    for kind in ("tmp", "old"):
        prefix = _temp_prefix(out, kind).rsplit("-", 2)[0] + "-"  # without this process's pid
        for name in os.listdir(parent):
            pid = name[len(prefix):].split("-", 1)[0]
            if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE), so a kill at any moment
    leaves `b` holding the old data or the new, never neither. False where the OS or file system can't."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def _swap_in(tmp: str, out: str, overwrite: bool) -> None:
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not overwrite:
        raise FileExistsError(out)
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old data; a kill here leaves it to `_sweep_killed`
        return
    # two renames: a kill between them leaves OUT missing (the old data waits in .OUT.old-*/data)
    old = tempfile.mkdtemp(prefix=_temp_prefix(out, "old"), dir=os.path.dirname(out))
    os.rename(out, os.path.join(old, "data"))
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(os.path.join(old, "data"), out)  # put the old one back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
