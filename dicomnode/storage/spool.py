"""The spool: where instance bytes live, written so that a crash leaves all or nothing.

Every file reaches its final name by the same steps: write to a temporary file in
``<spool>/tmp`` (same file system), ``fsync`` it, ``os.replace`` it to its final
path, ``fsync`` the directory (and any directory just created).  Final paths are
built from hashes of the UIDs, never from received text, so a hostile
``../../x`` cannot name a file: ``<spool>/<study>/<series>/<sop>-<content>.dcm``.

:class:`ReceiveFile` is the file pynetdicom streams a C-STORE data set into
(chunked receive): it hashes as it writes, so a 2 GB instance is never re-read,
and it turns a full disk into a flag the handler answers ``0xA700`` for, instead of
an exception inside pynetdicom's reader thread that would abort the association.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Errors that mean "no room" rather than "bug": answered with Out of Resources.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def uid_hash(uid: str, length: int = 32) -> str:
    """A path component for a UID: hex of its SHA-256 (never the UID itself)."""
    return hashlib.sha256(uid.encode("ascii", "backslashreplace")).hexdigest()[:length]


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A spool directory: hashed layout, atomic placement, temporary files.

    Parameters
    ----------
    root : Path
        The spool directory; created if missing.
    fsync : bool
        fsync files and directories (on by default; off only for benchmarks).
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.tmp = self.root / "tmp"
        self.fsync = fsync
        self.tmp.mkdir(parents=True, exist_ok=True)

    # -- layout ---------------------------------------------------------------
    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        """Spool-relative path of an instance; content hash keeps replacements apart."""
        study = uid_hash(study_uid)
        return f"{study[:2]}/{study}/{uid_hash(series_uid)}/{uid_hash(sop_uid)}-{sha256[:16]}.dcm"

    def absolute(self, relative: str) -> Path:
        """Absolute path of a spool-relative path, refusing anything outside the spool."""
        path = (self.root / relative).resolve()
        if self.root not in path.parents:
            raise ValueError(f"path {relative!r} is outside the spool")
        return path

    # -- writing --------------------------------------------------------------
    def place(self, tmp_path: Path, relative: str) -> Path:
        """Move a complete temporary file to its final place durably; return the path.

        The temporary file must be in :attr:`tmp` (same file system, so the rename
        is atomic).  Raises ``OSError`` on failure; the temporary file is left for
        the caller to remove.
        """
        final = self.absolute(relative)
        created = self._makedirs(final.parent)
        if self.fsync:
            fd = os.open(tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp_path, final)
        if self.fsync:
            fsync_dir(final.parent)
            for directory in created:
                fsync_dir(directory.parent)
        return final

    def write_bytes(self, data: bytes, relative: str) -> Path:
        """Write ``data`` durably to ``relative`` (temp file, fsync, rename, dir fsync)."""
        tmp = self.new_temp_path(".part")
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
            return self.place(tmp, relative)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, relative: str) -> None:
        """Delete a spool file (missing is fine) and prune empty directories."""
        path = self.absolute(relative)
        path.unlink(missing_ok=True)
        for parent in list(path.parents)[:3]:
            try:
                parent.rmdir()
            except OSError:
                break

    def new_temp_path(self, suffix: str = ".dcm") -> Path:
        name = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}{suffix}"
        return self.tmp / name

    def clean_temp(self, pid: int | None = None) -> int:
        """Remove temporary files left by a crash; return how many were removed.

        With ``pid``, only those of that (ended) process: the node's other receiving
        processes are writing theirs.
        """
        count = 0
        for entry in self.tmp.iterdir():
            if pid is not None and not entry.name.startswith(f"{pid}-"):
                continue
            try:
                entry.unlink()
                count += 1
            except IsADirectoryError:
                shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                pass
        return count

    def free_bytes(self) -> int:
        """Bytes available to an unprivileged writer on the spool's file system."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _makedirs(self, directory: Path) -> list[Path]:
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        directory.mkdir(parents=True, exist_ok=True)
        return list(reversed(missing))


class ReceiveFile:
    """A write-only temporary file that hashes its content and survives a full disk.

    It offers the small file API pynetdicom's chunked receive uses (``write``,
    ``file.flush``, ``close``, ``name``).  On ``ENOSPC`` (or another no-space error) it
    records :attr:`error`, removes the partial file and ignores the rest of the
    data set, so the association goes on and the handler answers ``0xA700``.
    """

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.path = path
        self.size = 0
        self.error: OSError | None = None
        self.owner = threading.current_thread()
        self._sha = hashlib.sha256()
        self.file = self  # pynetdicom calls ``.file.flush()`` after each fragment
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:  # spool unwritable: answered 0xA700 by the handler
            self.error = exc

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is not None or self._fd is None:
            return len(data)
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._fail(exc)
            return len(data)
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Writes go straight to the kernel (no user-space buffer); nothing to flush."""

    def sync(self) -> None:
        """fsync the data written so far (raises OSError)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def discard(self) -> None:
        """Close and delete the file (after a failure or when it was not kept)."""
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        if exc.errno not in NO_SPACE_ERRNOS:
            logger.error("receive file %s: write failed: %s", self.path.name, exc)
        self.discard()
