"""Installing a model: every file sha256-verified before it is moved into place, then the install stamp.

* Hub files (the manifest's ``hub`` sources at pinned 40-hex revisions, mirrors in order): a copy in the
  Hugging Face cache is used when its sha256 matches (no network); otherwise
  ``huggingface_hub.hf_hub_download`` fetches the file into ``<model>/.cassr-staging/`` with its endpoint
  (``HF_ENDPOINT``), token, retries, ``Range`` resume, disk-space check and transfer backends.
* Plain URLs (GitHub releases): ``huggingface_hub`` has no public downloader for arbitrary URLs, so a small
  standard-library fetch streams into ``<dest>.part`` with a running sha256, retries with back-off and
  resumes a ``.part`` with ``Range``, in the same run and the next one.
* A file whose sha256 is not the manifest's is deleted and :class:`VerificationError` (exit 3) names both
  hashes. The stamp is removed before the first file changes and written after the last one.

``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` are read at call time; offline, only the Hugging Face cache is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cassr_cli._version import __version__
from cassr_cli.errors import ConfigError, DownloadError
from cassr_cli.weights.manifest import ModelSpec, WeightFile
from cassr_cli.weights.paths import STAMP_NAME, model_dir
from cassr_cli.weights.store import FilePlan, HashProgress, part_path, plan_model, sha256_file, write_stamp

logger = logging.getLogger(__name__)
STAGING_DIR = ".cassr-staging"
LOCK_NAME = ".cassr-download.lock"
_CODING_ERRORS = (TypeError, AttributeError, NameError)  # never mistaken for a failed download


class VerificationError(DownloadError):
    """The bytes received are not the manifest's (sha256 or size); nothing was installed (exit 3)."""


@dataclass(frozen=True)
class DownloadSettings:
    """Plain-URL transfers (Hub files use huggingface_hub's own): ``attempts`` per file, the pause before
    retry ``n`` (0-based) is ``min(max_delay, base_delay * 2**n)`` (``sleep`` is injectable for tests),
    ``timeout`` seconds without data counts as a stalled connection."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    timeout: float = 60.0

    def delay(self, retry: int) -> float:
        return min(self.max_delay, self.base_delay * 2**retry)


@dataclass(frozen=True)
class InstallResult:
    model: ModelSpec
    folder: Path
    fetched: tuple[str, ...]
    already_installed: bool
    bytes_downloaded: int


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` is ``1``/``true``/``yes``/``on`` (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` without a trailing slash, else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def source_url(model: ModelSpec, entry: WeightFile) -> str:
    """Where ``entry`` is fetched from first: its URL, or its resolve URL on the first hub source."""
    if entry.url:
        return entry.url
    from huggingface_hub import hf_hub_url

    source = model.hub[0]
    return hf_hub_url(source.repo, entry.hub_path, revision=source.revision, endpoint=hub_endpoint())


def install_model(
    weights_dir: Path,
    model: ModelSpec,
    *,
    force: bool = False,
    settings: DownloadSettings | None = None,
    progress: HashProgress | None = None,
) -> InstallResult:
    """Make ``model`` installed and verified in ``weights_dir``, fetching only what is missing.

    Raises:
        DownloadError: offline, network or HTTP failure, sha256/size mismatch (:class:`VerificationError`),
            disk full, another install of the model running (exit 3).
        ConfigError: ``weights_dir`` is inside the installed package.
    """
    package, target = Path(__file__).resolve().parents[1], weights_dir.expanduser().resolve()
    if target == package or package in target.parents:
        raise ConfigError(f"refusing to write weights into the cassr package directory ({target})")
    folder = model_dir(weights_dir, model.name)
    if not folder.is_dir():  # offline with nothing installed: fail before creating anything
        _refuse_offline(model, [f for f in model.files if _hf_cached(model, f) is None])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create {folder}: {err.strerror or err}") from None
    with _model_lock(folder, model.name):
        plan = plan_model(weights_dir, model, force=force)
        if all(i.action == "present" for i in plan):
            return InstallResult(model, folder, (), True, 0)
        verified = {  # present, or an unstamped file (copied by hand?) that hashes right
            i.entry.path: (i.dest.stat().st_size, i.entry.sha256)
            for i in plan
            if i.action == "present"
            or (i.action == "check" and sha256_file(i.dest, progress=progress, label=f"{model.name}/{i.entry.path}") == i.entry.sha256)
        }
        todo = [i for i in plan if i.entry.path not in verified]
        cached = {i.entry.path: _hf_cached(model, i.entry) for i in todo}
        _refuse_offline(model, [i.entry for i in todo if cached[i.entry.path] is None])  # before any change
        if (free := shutil.disk_usage(folder).free) < (needed := sum(i.entry.size - i.have for i in todo)):
            raise DownloadError(
                f"not enough disk space in {folder}: need up to {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
                hint="free some space or choose another --weights-dir",
            )
        if force:
            shutil.rmtree(folder / STAGING_DIR, ignore_errors=True)
        (folder / STAMP_NAME).unlink(missing_ok=True)  # not installed until the new stamp is written
        downloaded = 0
        for item in todo:
            settings = settings or DownloadSettings()
            downloaded += _fetch_file(model, folder, item, cached[item.entry.path], force, settings, progress)
            verified[item.entry.path] = (item.dest.stat().st_size, item.entry.sha256)
        write_stamp(folder, model.name, verified)
        shutil.rmtree(folder / STAGING_DIR, ignore_errors=True)
    return InstallResult(model, folder, tuple(i.entry.path for i in todo), False, downloaded)


def _fetch_file(
    model: ModelSpec, folder: Path, item: FilePlan, cached: Path | None, force: bool, settings: DownloadSettings,
    progress: Any,
) -> int:
    """Bring one file into place, verified: from the Hugging Face cache, the Hub or its URL; returns the
    bytes downloaded."""
    entry, label, part = item.entry, f"{model.name}/{item.entry.path}", part_path(item.dest)
    item.dest.parent.mkdir(parents=True, exist_ok=True)
    if force:
        part.unlink(missing_ok=True)
    if cached is not None:
        shutil.copyfile(cached, part)
        try:
            _install(part, item.dest, entry, label, progress)
            return 0
        except VerificationError:
            logger.warning("%s: the Hugging Face cache copy has another sha256; downloading it", label)
            _refuse_offline(model, [entry])
    if entry.url:
        received = _fetch_url(entry, part, label, settings, progress)
    else:
        staging = folder / STAGING_DIR
        os.replace(_from_hub(model, entry, staging, label, progress, skip_cache=cached is not None), part)
        received = part.stat().st_size
    _install(part, item.dest, entry, label, progress)
    return received


def _install(part: Path, dest: Path, entry: WeightFile, label: str, progress: HashProgress | None) -> None:
    """Move ``part`` to ``dest`` if its sha256 is the manifest's; otherwise delete it and raise."""
    actual, size = sha256_file(part, progress=progress, label=label), part.stat().st_size
    if actual != entry.sha256:
        part.unlink(missing_ok=True)
        raise VerificationError(
            f"sha256 mismatch for {label}: expected {entry.sha256}, got {actual} ({size} bytes); "
            "the partial file was deleted",
            hint="retry; if it happens again the source no longer serves the pinned file: report it",
        )
    if size != entry.size:  # the bytes are right, so the manifest's (derived) size is not
        logger.warning("%s is %d bytes, the manifest says %d; the sha256 matches, so it is kept", label, size, entry.size)
    os.replace(part, dest)


def _refuse_offline(model: ModelSpec, entries: list[WeightFile]) -> None:
    if entries and offline_mode():
        raise DownloadError(
            f"offline mode (HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}): {model.name} needs "
            f"{len(entries)} file(s) from the network, e.g. {entries[0].path}",
            hint="unset HF_HUB_OFFLINE to download, or copy an installed weights folder here (docs/weights.md)",
        )


def _hf_cached(model: ModelSpec, entry: WeightFile) -> Path | None:
    """The file in the Hugging Face cache at one of the pinned revisions, if it is there."""
    if entry.url:
        return None
    from huggingface_hub import try_to_load_from_cache

    for source in model.hub:
        found = try_to_load_from_cache(source.repo, entry.hub_path, revision=source.revision)
        if isinstance(found, str):
            return Path(found)
    return None


def _from_hub(
    model: ModelSpec, entry: WeightFile, staging: Path, label: str, progress: HashProgress | None, skip_cache: bool
) -> Path:
    """``entry`` from the first hub source that serves it, downloaded into ``staging`` by huggingface_hub
    (``skip_cache``: not even copied from the Hugging Face cache, whose copy was found wrong)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import tqdm

    class Bar(tqdm):  # huggingface_hub reports the bytes here; cassr draws its own bars
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.received = kwargs.get("initial") or 0

        def update(self, n: float | None = 1) -> bool | None:
            self.received += n or 0
            if progress is not None:
                progress(label, int(self.received), entry.size)
            return None

    failures = []
    for src in model.hub:
        try:
            path = hf_hub_download(
                src.repo, entry.hub_path, revision=src.revision, local_dir=staging, force_download=skip_cache,
                endpoint=hub_endpoint(), tqdm_class=Bar,
            )  # fmt: skip
            return Path(path)
        except _CODING_ERRORS:
            raise
        except Exception as err:  # whichever HTTP stack huggingface_hub uses: say what failed, try the next
            failures.append(f"{src.repo}: {_reason(err)}")
            logger.warning("%s: %s", label, failures[-1])
    denied = any(re.search(r"HTTP 40[13]\b", f) for f in failures)
    raise DownloadError(
        f"{label}: " + "; ".join(failures),
        hint="set HF_TOKEN (or run `hf auth login`) if the repository needs it"
        if denied
        else "check the connection and HF_ENDPOINT, and run the command again",
    )


def _reason(err: BaseException) -> str:
    """One line: the HTTP status and URL of a failed request, else the innermost message."""
    inner = err.__cause__ or err
    response = getattr(err, "response", None) or getattr(inner, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"HTTP {response.status_code} ({type(err).__name__}) at {response.url}"
    text = " ".join(str(inner).split()) or type(inner).__name__
    return "connection refused" if "Connection refused" in text else text[:200]


@contextlib.contextmanager
def _model_lock(folder: Path, name: str) -> Iterator[None]:
    """One install per model folder at a time (a second one fails at once instead of mixing files)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(folder / LOCK_NAME, timeout=0):
            yield
    except Timeout:
        raise DownloadError(
            f"another cassr process is installing {name!r} in {folder.parent}",
            hint="wait for it to finish, then run the command again",
        ) from None


# --- plain URLs -------------------------------------------------------------------------------------------


def _fetch_url(entry: WeightFile, part: Path, label: str, settings: DownloadSettings, progress: Any) -> int:
    """Append ``entry.url`` to ``part`` from where it stops (``Range``), with retries; returns bytes received."""
    import http.client
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    url, host, received, error = entry.url or "", urlsplit(entry.url or "").netloc, 0, ""
    for retry in range(settings.attempts):
        if retry:
            wait = settings.delay(retry - 1)
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", label, error, wait, retry, settings.attempts - 1)
            settings.sleep(wait)
        have = part.stat().st_size if part.is_file() else 0
        # identity: sizes and Range offsets count the file's own bytes, never a compressed encoding
        headers = {"User-Agent": f"cassr/{__version__}", "Accept-Encoding": "identity"}
        headers.update({"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=settings.timeout) as response:
                span = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                pos = (int(span[1]) if span else -1) if response.status == 206 else 0  # 200: the whole file
                if pos not in (0, have):
                    raise http.client.HTTPException(f"the server resumed at byte {pos}, not {have}")
                length = response.headers.get("Content-Length", "")
                total = pos + int(length) if length.isdigit() else None
                with part.open("r+b" if pos else "wb") as out:
                    out.seek(pos)
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        received, pos = received + len(chunk), pos + len(chunk)
                        if progress is not None:
                            progress(label, pos, total or entry.size)
            if total is None or pos >= total:
                return received
            error = f"transfer ended early at {pos} of {total} bytes"
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                hint = "the source may have moved; check the manifest"
                raise DownloadError(f"{label}: not found (HTTP {err.code}) at {url}", hint=hint) from None
            if err.code == 416:  # nothing left to resume from: start over
                part.unlink(missing_ok=True)
            elif err.code != 429 and err.code < 500:
                raise DownloadError(f"{label}: unexpected HTTP {err.code} at {url}") from None
            error = f"HTTP {err.code} from {host}"
        except urllib.error.URLError as err:
            error = f"cannot connect to {host} ({_reason(err.reason)})"  # type: ignore[arg-type]
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            error = f"connection to {host} lost ({_reason(err)})"
        except OSError as err:
            raise DownloadError(f"cannot write {part}: {err.strerror or err}") from None
    hint = "check the connection and run the command again (it resumes)"
    raise DownloadError(f"{label}: {error} (gave up after {settings.attempts} attempts)", hint=hint)
