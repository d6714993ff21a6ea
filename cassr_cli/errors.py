"""Typed errors. Each carries the exit code it maps to and a one-line hint for the user.

The command line turns these into exit codes in exactly one place (``cli/app.py``). Library code raises
them and never prints or exits. Exit codes (README, DESIGN §5):

* 0 — everything done (skips included)
* 1 — some images failed (the batch went on), or an unexpected internal error
* 2 — usage error (bad option, bad value, conflicting flags, an input would be overwritten)
* 3 — environment not ready (weights missing or corrupt, device unavailable, optional package missing)
* 130 — interrupted (Ctrl-C); no partial output is left behind
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130


class CassrError(Exception):
    """Base class of every error cassr raises on purpose.

    Args:
        message: what happened, one line, naming the thing concerned.
        hint: how to fix it, one line (optional).
    """

    exit_code: int = EXIT_FAILURES

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


# --- usage (exit 2) -------------------------------------------------------------------------------------


class UsageError(CassrError):
    """The command line or configuration asks for something impossible (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file, environment variable or option value is invalid (exit 2)."""


class InputNotFoundError(UsageError):
    """A source named on the command line does not exist or matches nothing (exit 2)."""


class OverwriteInputError(UsageError):
    """An output path would be one of the inputs (exit 2)."""


# --- environment (exit 3) -------------------------------------------------------------------------------


class EnvironmentNotReadyError(CassrError):
    """Something outside the user's images is missing or broken (exit 3)."""

    exit_code = EXIT_ENVIRONMENT


class WeightsMissingError(EnvironmentNotReadyError):
    """Model weights are not installed where cassr looks for them (exit 3)."""


class WeightsCorruptError(EnvironmentNotReadyError):
    """Installed weights fail their integrity check (exit 3)."""


class DownloadError(EnvironmentNotReadyError):
    """A weight download failed: network, HTTP status, or verification (exit 3)."""


class DeviceUnavailableError(EnvironmentNotReadyError):
    """The requested device, dtype or attention backend is not available here (exit 3)."""


class ModelLoadError(EnvironmentNotReadyError):
    """A model file exists but cannot be loaded (unsupported architecture, mismatched adapter) (exit 3)."""


# --- per-image failures (exit 1 for the batch; the batch goes on) ----------------------------------------


class ImageError(CassrError):
    """One image cannot be processed; the batch records it and goes on (exit 1 at the end)."""

    exit_code = EXIT_FAILURES


class UnsupportedImageError(ImageError):
    """The file is not an image cassr can read (corrupt, truncated, empty, animated, unknown mode)."""


class ImageTooLargeError(ImageError):
    """The image exceeds the pixel limit (decompression-bomb guard) or the output would not fit in memory."""


class TileOutOfMemoryError(ImageError):
    """Out of device memory even at the smallest tile size."""


class NumericalError(ImageError):
    """A model produced NaN or Inf for this image (e.g. a half-precision overflow)."""


class ImageWriteError(ImageError):
    """The output file could not be written (permissions, disk full, format limits)."""
