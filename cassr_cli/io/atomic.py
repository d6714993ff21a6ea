"""Atomic file writes: an output path is never seen half-written, and a failed write leaves no litter.

Used for every output image (:func:`cassr_cli.io.image.write_atomic` re-exports :func:`write_atomic`).
The temporary file lives next to the target so that the final rename stays on one file system; its name
ends with ``.cassr-partial`` so that input discovery never takes it for an image.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from cassr_cli.errors import ImageWriteError
from cassr_cli.io.discover import PARTIAL_SUFFIX


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to ``.{name}.{random}.cassr-partial`` in the same directory, are flushed and fsynced, and
    the temporary file is renamed onto ``path``. On any exception (KeyboardInterrupt included) the temporary
    file is removed and the exception re-raised; an existing ``path`` is left as it was. OSErrors become
    :class:`ImageWriteError`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_partial(path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    _fsync_directory(path.parent)


def temporary_names(output_name: str) -> re.Pattern[str]:
    """The names of the temporary files :func:`write_atomic` makes for an output called ``output_name``
    (``.{name}.{8 hex digits}.cassr-partial``, and nothing else: not another output's temporaries)."""
    return re.compile(rf"\.{re.escape(output_name)}\.[0-9a-f]{{8}}{re.escape(PARTIAL_SUFFIX)}")


def _create_partial(path: Path) -> tuple[int, Path]:
    """Create the temporary file exclusively, with the permissions a normal file gets (umask applies)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); harmless to skip where directories cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, exc: OSError) -> ImageWriteError:
    return ImageWriteError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check that the output folder is writable and has free space",
    )
