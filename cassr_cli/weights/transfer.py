"""One file over HTTP: streamed into ``<dest>.part`` with a running sha256, resumed with ``Range``, retried
with exponential back-off, verified against the manifest. Used by :mod:`cassr_cli.weights.download`.

The HTTP client is ``httpx2`` (what huggingface_hub 2.x depends on) or ``httpx``; it is imported inside the
functions so that importing the CLI stays cheap. No Rich here: progress goes to a plain callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cassr_cli._version import __version__
from cassr_cli.errors import DownloadError
from cassr_cli.weights.manifest import WeightFile

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


class ProgressCallback(Protocol):
    """Told about bytes as they arrive: ``file`` is ``"<model>/<path>"``; ``total`` is the expected size."""

    def __call__(self, file: str, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one file from one source.

    The delay before retry ``n`` (0-based) is ``min(max_delay, base_delay * 2**n)``; ``sleep`` is injectable
    so tests run instantly.
    """

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        return min(self.max_delay, self.base_delay * (2**retry))


class VerificationError(DownloadError):
    """The bytes received are not the manifest's (sha256 or size); nothing was installed (exit 3)."""


class SourceNotFound(Exception):
    """This source does not have the file (HTTP 404/410); the caller tries the next one."""


class _Transient(Exception):
    """Worth retrying from the same source."""


def _httpx() -> Any:
    """The HTTP client module: ``httpx2`` (what huggingface_hub 2.x ships) or ``httpx``."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        import httpx
    return httpx


@contextlib.contextmanager
def open_client(*, connect_timeout: float, read_timeout: float) -> Iterator[Any]:
    """An HTTP client that follows redirects (it drops ``Authorization`` when the host changes)."""
    httpx = _httpx()
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
    # identity: sizes and Range offsets must count the file's own bytes, never a compressed encoding
    headers = {"User-Agent": f"cassr/{__version__}", "Accept-Encoding": "identity"}
    with httpx.Client(follow_redirects=True, timeout=timeout, headers=headers) as client:
        yield client


@dataclass
class _PartState:
    """Bytes written to the ``.part`` file so far and their running sha256."""

    offset: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    @classmethod
    def from_part(cls, part: Path) -> _PartState:
        state = cls()
        if part.is_file():
            with part.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    state.digest.update(chunk)
                    state.offset += len(chunk)
        return state

    def reset(self, part: Path) -> None:
        part.unlink(missing_ok=True)
        self.offset = 0
        self.digest = hashlib.sha256()


def download_to_part(
    client: Any,
    url: str,
    headers: dict[str, str],
    part: Path,
    entry: WeightFile,
    label: str,
    policy: RetryPolicy,
    progress: ProgressCallback | None,
) -> tuple[int, int]:
    """Fill ``part`` from ``url`` (resuming what it already holds) and verify it against ``entry``.

    Returns:
        ``(size, bytes_transferred)``; the caller renames ``part`` into place.

    Raises:
        VerificationError: wrong sha256 or size (``part`` deleted).
        SourceNotFound: HTTP 404/410 (try another source).
        DownloadError: anything that retrying did not fix, as one line.
    """
    state = _PartState.from_part(part)
    if state.offset:
        logger.info("%s: resuming after %d bytes", label, state.offset)
    transferred = 0
    retry = 0
    while True:
        before = state.offset
        try:
            _transfer(client, url, headers, part, entry, label, state, progress)
            transferred += max(0, state.offset - before)
            break
        except _Transient as err:
            transferred += max(0, state.offset - before)
            if retry + 1 >= policy.attempts:
                raise DownloadError(f"{label}: {err} (gave up after {policy.attempts} attempts)") from None
            wait = policy.delay(retry)
            logger.warning(
                "%s: %s; retrying in %.1f s (%d/%d)", label, err, wait, retry + 1, policy.attempts - 1
            )
            policy.sleep(wait)
            retry += 1
    size = state.offset
    actual = state.digest.hexdigest()
    if actual != entry.sha256:
        part.unlink(missing_ok=True)
        raise VerificationError(
            f"sha256 mismatch for {label}: expected {entry.sha256}, got {actual} ({size} bytes); "
            "the partial file was deleted",
            hint="retry; if it happens again the source no longer serves the pinned file: report it",
        )
    if size != entry.size:  # only reachable for a derived size: the hash is right, the manifest's size is not
        logger.warning(
            "%s is %d bytes, the manifest says %d (a derived value); the sha256 matches, so the file is kept",
            label,
            size,
            entry.size,
        )
    return size, transferred


def _transfer(
    client: Any,
    url: str,
    headers: dict[str, str],
    part: Path,
    entry: WeightFile,
    label: str,
    state: _PartState,
    progress: ProgressCallback | None,
) -> None:
    """One HTTP attempt appending to ``part`` from ``state.offset``."""
    httpx = _httpx()
    host = urlsplit(url).netloc
    request_headers = dict(headers)
    if state.offset:
        request_headers["Range"] = f"bytes={state.offset}-"
    try:
        with client.stream("GET", url, headers=request_headers) as response:
            total = _check_response(response, url, entry, label, state, part)
            limit = total if total is not None else (None if entry.size_derived else entry.size)
            with part.open("ab") as out:
                for chunk in response.iter_bytes():  # as received: a cut loses nothing
                    if limit is not None and state.offset + len(chunk) > limit:
                        raise VerificationError(
                            f"size mismatch for {label}: the server sent more than the expected {limit} "
                            "bytes; the partial file was deleted"
                        )
                    out.write(chunk)
                    state.digest.update(chunk)
                    state.offset += len(chunk)
                    if progress is not None:
                        progress(label, state.offset, total or entry.size)
    except VerificationError:
        state.reset(part)
        raise
    except httpx.ConnectError as err:
        raise _Transient(f"cannot connect to {host} ({_reason(err)})") from None
    except httpx.TimeoutException:
        raise _Transient(f"timed out talking to {host}") from None
    except httpx.TransportError as err:
        raise _Transient(f"connection to {host} lost after {state.offset} bytes ({_reason(err)})") from None
    except httpx.HTTPError as err:
        raise DownloadError(f"{label}: request to {url} failed: {_reason(err)}") from None
    except OSError as err:
        raise DownloadError(f"cannot write {part}: {err.strerror or err}") from None
    expected = total if total is not None else (None if entry.size_derived else entry.size)
    if expected is not None and state.offset < expected:
        raise _Transient(f"transfer ended early at {state.offset} of {expected} bytes")


def _check_response(
    response: Any, url: str, entry: WeightFile, label: str, state: _PartState, part: Path
) -> int | None:
    """Check status and headers; returns the full size the server announces (``None`` if it does not)."""
    status = response.status_code
    if status == 416 and state.offset:
        logger.info("%s: the server refused to resume; starting over", label)
        state.reset(part)
        raise _Transient("the server refused to resume (HTTP 416)")
    if status in (404, 410):
        raise SourceNotFound(f"{label}: not found (HTTP {status}) at {url}")
    if status in (401, 403):
        raise DownloadError(
            f"{label}: access denied (HTTP {status}) at {url}",
            hint="set HF_TOKEN (or run `hf auth login`) if the repository needs it",
        )
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status} from {urlsplit(url).netloc}")
    if status not in (200, 206):
        raise DownloadError(f"{label}: unexpected HTTP {status} at {url}")
    total: int | None = None
    if status == 206:
        start, total = _content_range(response.headers.get("content-range", ""))
        if start != state.offset:
            state.reset(part)
            raise _Transient(f"the server resumed at byte {start}, not {state.offset}")
    else:
        if state.offset:
            logger.info("%s: the server ignored the Range request; starting over", label)
            state.reset(part)
        length = response.headers.get("content-length", "")
        total = int(length) if length.isdigit() else None
    if total is not None and total != entry.size:
        if not entry.size_derived:
            state.reset(part)
            raise VerificationError(
                f"size mismatch for {label}: the server has {total} bytes, the manifest expects "
                f"{entry.size}; nothing was installed"
            )
        logger.warning(
            "%s: the server has %d bytes, the manifest's derived size is %d", label, total, entry.size
        )
    return total


def _content_range(value: str) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` → ``(START, TOTAL)`` (``TOTAL`` may be ``*``)."""
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes":
            raise ValueError(value)
        return int(span.split("-", 1)[0]), (int(total) if total.isdigit() else None)
    except ValueError:
        raise _Transient(f"bad Content-Range header {value!r}") from None


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if "Connection refused" in text or "ECONNREFUSED" in text or "Errno 111" in text:
        return "connection refused"
    return text.splitlines()[0][:200]
