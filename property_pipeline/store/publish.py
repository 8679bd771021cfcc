"""Crash-safe publication of a file: the one way the pipeline puts a file under its final name.

The bytes go to a hidden temporary beside the final name (`.{name}.{pid}.{random}.tmp`, which every
scan skips), are fsynced, then the temporary is linked to the final name (which fails if that name
exists: a published file is never overwritten) or renamed over it when replacing is asked for, and
the folder is fsynced. A crash leaves the whole file under its name, or nothing there; the hidden
temporary it may leave is removed by the next run of the command that owns it (under its lock).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from property_pipeline.errors import PayloadError

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
HASH_CHUNK = 1 << 20


class PublishedBytesDiffer(PayloadError):
    """The bytes written do not hash to the SHA-256 they were meant to have; nothing was published."""


def temporary_name(final: Path) -> Path:
    """The hidden temporary a publication of `final` writes first."""
    return final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp"


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a rename, a new or removed file) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def publishing(
    final: Path, *, replace: bool = False, read_only: bool = True, expected_sha256: str | None = None
) -> Iterator[BinaryIO]:
    """Write `final` crash-safely through the handle this yields; published when the block ends without error.

    `replace`: rename over an existing file (for files that are rewritten, like an export); otherwise an
    existing `final` raises FileExistsError and stays as it was. `read_only`: the published file has no
    write bit. `expected_sha256`: the bytes are read back from disk and must hash to it before they
    are published (PublishedBytesDiffer otherwise).
    """
    temporary = temporary_name(final)
    try:
        with open(temporary, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if expected_sha256 is not None:
            actual = sha256_file(temporary)[0]
            if actual != expected_sha256:
                raise PublishedBytesDiffer(
                    f"the bytes written for {final.name} hash to {actual[:12]}…, not {expected_sha256[:12]}…"
                )
        if read_only:
            os.chmod(temporary, READ_ONLY)
        if replace:
            os.replace(temporary, final)
        else:
            _link_without_overwriting(temporary, final)
        fsync_folder(final.parent)
    finally:
        with contextlib.suppress(OSError):  # a full or read-only disk may refuse the clean-up too: keep the cause
            temporary.unlink(missing_ok=True)


def _link_without_overwriting(temporary: Path, final: Path) -> None:
    """Give the temporary its final name, failing if that name exists (atomically where hard links work)."""
    try:
        os.link(temporary, final)
    except FileExistsError:
        raise _exists(final) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A filesystem without hard links: check, then rename (a writer racing in between is not expected
        # here: every publisher of a name holds the lock that owns it).
        if final.exists():
            raise _exists(final) from None
        os.rename(temporary, final)


def _exists(final: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "already exists; published files are never overwritten", str(final))


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def remove_stale_temporaries(folder: Path, final_name_pattern: str) -> list[Path]:
    """Delete the temporaries a killed publisher of names matching `final_name_pattern` left in `folder`.

    Only safe for the caller that holds the lock owning those names: then no live publisher writes them.
    """
    if not folder.is_dir():
        return []
    removed = []
    for leftover in folder.glob(f".{final_name_pattern}.*.tmp"):
        if leftover.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.chmod(leftover, stat.S_IRUSR | stat.S_IWUSR)
                leftover.unlink()
                removed.append(leftover)
    return removed
