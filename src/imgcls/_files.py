"""Files written safely: atomic replacement, chunked SHA-256, a crash-proof inter-process lock, one download.

Every module that writes a file the user keeps (run folder, caches, downloads) goes through here, so that a full
disk, a read-only folder or a killed process behaves the same everywhere:

* `atomic_write_bytes` / `atomic_write_text` / `atomic_open`: the data goes to a temporary file beside the target
  (``.<name>.<pid>.<host>.tmp``), is flushed and ``fsync``-ed, then renamed over the target. A reader sees the old
  file or the new one, never half of one. Any ``OSError`` (``ENOSPC``, ``EROFS``, ``EACCES``, quota) becomes a
  one-line `UserError` naming the file, the temporary file is removed and the previous file is left as it was.
  New files get the usual ``0666 & ~umask`` permissions (``tempfile.mkstemp`` would make them 0600).
* `remove_stale_temps`: temporary files of processes that no longer exist (killed with ``kill -9`` mid-write).
* `sha256_file`: SHA-256 of a file read in 1 MiB blocks (a 550 MB weights file is never held in memory).
* `FileLock`: an exclusive lock between processes (``flock`` on a lock file). The holder writes its pid, host,
  start time and purpose into the file. A waiter says once what it waits for; a lock whose recorded owner is gone
  (on this host) but that is still held — by an orphaned child that inherited the descriptor — is broken
  (the file is unlinked, so the orphan keeps a lock on a file nobody opens any more).
* `download`: the one HTTP(S) download: resumes from ``<dest>.part`` with a ``Range`` request (a server that
  ignores it gets a clean restart), retries network failures with back-off, verifies SHA-256 (full digest or a
  published prefix of at least 8 hex digits) and size, and renames into place only once verified.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from imgcls.errors import UserError

log = logging.getLogger("imgcls.files")

_CHUNK = 1 << 20
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"\.(\d+)\.([A-Za-z0-9-]+)\.tmp$")

PathLike = str | os.PathLike


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------------------------
# Atomic writes.


def temp_path(path: PathLike) -> Path:
    """The temporary name `atomic_open` writes `path` under: hidden, in the same folder, owner pid and host."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{_HOST}.tmp")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the ``with`` block ends without an exception.

    Args:
        path: the file to replace (its folder is created when missing).
        mode: ``"wb"`` or ``"w"`` (text, ``newline=""`` so CSV writers control line ends).
        encoding: text encoding (default UTF-8) for ``mode="w"``.

    Raises:
        UserError: the file system refused (full, read-only, no permission); `path` is unchanged and no temporary
            file is left. An ``OSError`` raised inside the block (a write to the file) is reported the same way;
            other exceptions propagate unchanged after the same clean-up.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    text = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({_reason(exc)})") from None
    try:
        with open(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({_reason(exc)}); the previous file is unchanged") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: some file systems refuse to open or sync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Replace `path` with `data` atomically (see `atomic_open`); returns `path`."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Replace `path` with `text` atomically (see `atomic_open`); returns `path`."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (a killed child not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): existence is all we know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_stale_temps(folder: PathLike) -> list[Path]:
    """Delete the temporary files (`temp_path` names) in `folder` whose writing process on this host is gone.

    Returns:
        The files removed. Temporaries of live processes and of other hosts are left alone.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.search(entry.name)
        if match is None or match.group(2) != _HOST or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        log.info("removed %d partial file(s) left by killed processes in %s", len(removed), folder)
    return removed


# --------------------------------------------------------------------------------------------------------------
# Hashing.


def sha256_file(path: PathLike, chunk: int = _CHUNK) -> str:
    """Hex SHA-256 of the file at `path`, read `chunk` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_matches(digest: str, expected: str) -> bool:
    """`digest` equals `expected`, or starts with it when `expected` is a published prefix (>= 8 hex digits)."""
    expected = expected.lower()
    return len(expected) >= 8 and digest.lower().startswith(expected)


# --------------------------------------------------------------------------------------------------------------
# Locking.


class FileLock:
    """Exclusive lock between processes on `path` (module docstring), as a context manager.

    Args:
        path: the lock file (created; removed again on release).
        what: what the holder does, shown to waiters ("building the decode cache of 50000 images").
        timeout: seconds to wait before a `UserError` (None: wait as long as a live owner holds it).
        poll: first polling interval in seconds (doubles up to 0.5 s).
    """

    def __init__(self, path: PathLike, what: str = "", *, timeout: float | None = None, poll: float = 0.02):
        self.path, self.what, self.timeout, self.poll = Path(path), what, timeout, poll
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def fd(self) -> int | None:
        """The open descriptor while held (a forked child that should not keep the lock closes it)."""
        return self._fd

    def acquire(self) -> None:
        """Block until the lock is ours (module docstring for stale locks and messages)."""
        import fcntl

        start, delay, told = time.monotonic(), self.poll, 0.0
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                if self._stale(owner) and _same_file(fd, self.path):
                    log.warning(
                        "%s: breaking a stale lock (process %s that held it is gone)", self.path, owner.get("pid")
                    )
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                    os.close(fd)
                    continue
                os.close(fd)
                waited = time.monotonic() - start
                if self.timeout is not None and waited > self.timeout:
                    raise UserError(f"{self.path}: still locked after {waited:.0f} s by {_describe(owner)}") from None
                if not told or time.monotonic() - told > 60:
                    log.warning("waiting for %s, held by %s", self.path, _describe(owner))
                    told = time.monotonic()
                time.sleep(delay)
                delay = min(0.5, delay * 2)
                continue
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    log.warning("%s: file system offers no locks (%s); continuing unlocked", self.path, _reason(exc))
                    return
                raise UserError(f"{self.path}: cannot lock ({_reason(exc)})") from None
            if not _same_file(fd, self.path):
                os.close(fd)  # the holder we waited for removed it: lock the new file instead
                continue
            record = {"pid": os.getpid(), "host": _HOST, "since": time.strftime("%H:%M:%S"), "what": self.what}
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(record).encode(), 0)
            self._fd = fd
            return

    def release(self) -> None:
        """Remove the lock file and let the next waiter in."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot create the lock file ({_reason(exc)})") from None

    @staticmethod
    def _stale(owner: dict) -> bool:
        pid = owner.get("pid")
        return isinstance(pid, int) and owner.get("host") == _HOST and pid != os.getpid() and not pid_alive(pid)


def _read_owner(fd: int) -> dict:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    if not owner.get("pid"):
        return "another process"
    text = f"process {owner['pid']}"
    if owner.get("host") != _HOST:
        text += f" on {owner.get('host')}"
    if owner.get("since"):
        text += f" since {owner['since']}"
    return text + (f" ({owner['what']})" if owner.get("what") else "")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --------------------------------------------------------------------------------------------------------------
# Downloading.

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


# Errors of the local file system while writing the partial file (a socket never raises these).
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class _LocalWriteError(Exception):
    """Writing the partial file failed (disk full, read-only): not worth a retry."""

    def __init__(self, exc: OSError):
        self.exc = exc


def _transfer(url: str, part: Path, timeout: float) -> None:
    """One HTTP attempt, appending to `part` from its current size when the server honours ``Range``."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "imgcls"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return  # nothing left to fetch: the checksum decides whether the file is whole
        raise
    with response:
        resumed = bool(offset) and response.status == 206
        if offset and not resumed:
            log.info("%s: server ignored the range request; restarting the download", url)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while block := response.read(_CHUNK):
                    f.write(block)
        except OSError as exc:
            if exc.errno in _LOCAL_ERRNOS:
                raise _LocalWriteError(exc) from None
            raise  # a read from the socket: retried by the caller
        expected = response.headers.get("Content-Length")
        if expected is not None and part.stat().st_size != (offset if resumed else 0) + int(expected):
            raise http.client.IncompleteRead(b"", int(expected))


def download(
    url: str,
    dest: PathLike,
    sha256: str | None = None,
    size: int | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `dest`, resuming interrupted transfers, and verify it.

    Args:
        url: what to fetch (``http``, ``https`` or ``file``).
        dest: final path; the transfer goes to ``<dest>.part`` and is renamed only once verified. An existing
            `dest` is returned as it is when it matches `sha256` (or when no digest is given).
        sha256: expected hex digest, or its published prefix (>= 8 hex digits); None: not checked (the caller
            records `sha256_file(dest)` itself).
        size: expected byte count, if published.
        retries: further attempts after a network failure, each resuming where the last stopped.
        timeout: seconds without data before an attempt fails.

    Returns:
        `dest` as a `Path`.

    Raises:
        UserError: the server refused (HTTP 4xx), the network failed `retries` + 1 times, the local disk refused
            the data, or the checksum or size did not match (the partial file is then deleted so the next run
            starts clean).
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or digest_matches(sha256_file(dest), sha256)):
        return dest
    part = dest.with_name(dest.name + ".part")
    with FileLock(dest.with_name(dest.name + ".lock"), f"downloading {url}"):
        if dest.is_file() and (sha256 is None or digest_matches(sha256_file(dest), sha256)):
            return dest  # another process finished it while we waited
        if part.exists() and size is not None and part.stat().st_size > size:
            part.unlink()  # longer than the real file: cannot be a prefix of it
        _fetch_with_retries(url, part, retries, timeout)
        got_size = part.stat().st_size
        if size is not None and got_size != size:
            part.unlink(missing_ok=True)
            raise UserError(f"{url}: got {got_size} bytes, expected {size}; the download was deleted, run again")
        if sha256 is not None:
            got = sha256_file(part)
            if not digest_matches(got, sha256):
                part.unlink(missing_ok=True)
                raise UserError(
                    f"{url}: SHA-256 mismatch (expected {sha256[:16]}…, got {got[:16]}…); "
                    "the download was deleted, run again or check the mirror"
                )
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise UserError(f"{dest}: cannot write ({_reason(exc)})") from None
    return dest


def _fetch_with_retries(url: str, part: Path, retries: int, timeout: float) -> None:
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == retries:
                raise UserError(f"{url}: HTTP {exc.code} {exc.reason} (check the address or the mirror)") from None
            reason: object = f"HTTP {exc.code}"
        except _LocalWriteError as err:
            raise UserError(f"{part}: cannot write ({_reason(err.exc)})") from None
        except (*_NETWORK_ERRORS, OSError) as exc:
            if attempt == retries:
                raise UserError(
                    f"{url}: download failed after {retries + 1} attempts ({getattr(exc, 'reason', exc)}); "
                    "run again to resume"
                ) from None
            reason = exc
        log.warning("%s: transfer interrupted (%s); resuming", url, reason)
        time.sleep(min(5.0, 0.2 * 2**attempt))


__all__ = [
    "FileLock",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "digest_matches",
    "download",
    "pid_alive",
    "remove_stale_temps",
    "sha256_file",
    "temp_path",
]
