"""Installing a model: each file verified by sha256 before it is moved into place, then the install stamp.

Hub files come through ``huggingface_hub.hf_hub_download`` (pinned revision, mirrors in order; its
endpoint, token, offline mode, retries and resume) into ``<model>/.cassr-staging/``, or from the Hugging Face
cache when it holds them. Plain URLs (GitHub releases), which ``huggingface_hub`` cannot fetch, use a small
standard-library fetch into ``<file>.part`` that retries and resumes with ``Range``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from cassr_cli._version import __version__
from cassr_cli.errors import ConfigError, DownloadError
from cassr_cli.weights.manifest import ModelSpec, WeightFile
from cassr_cli.weights.store import STAMP_NAME, FilePlan, Progress, plan_model, sha256_file, write_stamp

logger = logging.getLogger(__name__)
STAGING_DIR = ".cassr-staging"
ATTEMPTS, TIMEOUT = 5, 60.0  # plain-URL transfers: tries per file (1, 2, 4, 8 s apart), seconds without data
_CODING_ERRORS = (TypeError, AttributeError, NameError)  # never mistaken for a failed download


class VerificationError(DownloadError):
    """The bytes received are not the manifest's; they were deleted, nothing was installed (exit 3)."""


def hub_endpoint() -> str:  # HF_ENDPOINT as set now (a mirror), else the Hub
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


class InstallResult(NamedTuple):
    folder: Path
    fetched: tuple[str, ...]
    already_installed: bool


def install_model(
    weights_dir: Path, model: ModelSpec, *, force: bool = False, progress: Progress | None = None
) -> InstallResult:
    """Make ``model`` installed and verified in ``weights_dir``, fetching only what is missing
    (``force``: everything, not from the Hugging Face cache either). Offline (``HF_HUB_OFFLINE``), only
    the Hugging Face cache is used, and a model it cannot complete fails before anything changes.

    Raises:
        DownloadError: offline, network or HTTP failure, :class:`VerificationError`, disk full, another
            install of the model running (exit 3). ConfigError: ``weights_dir`` is inside the package.
    """
    from huggingface_hub import constants as hf_constants

    package, target = Path(__file__).resolve().parents[1], weights_dir.expanduser().resolve()
    if target == package or package in target.parents:
        raise ConfigError(f"refusing to write weights into the cassr package directory ({target})")
    folder = weights_dir / model.name
    plan = plan_model(weights_dir, model, force=force)
    if all(i.action == "present" for i in plan):
        return InstallResult(folder, (), True)
    # an unstamped file of the right size (copied by hand?) is kept if it hashes right
    hashed = {i.entry.path: sha256_file(i.dest, progress, i.label) for i in plan if i.action == "check"}
    todo = [i for i in plan if i.action != "present" and hashed.get(i.entry.path) != i.entry.sha256]
    cached = {i.entry.path: _hf_cached(model, i.entry, force) for i in todo}
    if (needed := [p for p, c in cached.items() if c is None]) and hf_constants.HF_HUB_OFFLINE:
        raise DownloadError(  # before anything changes
            f"offline mode (HF_HUB_OFFLINE is set): {model.name} needs {len(needed)} file(s) from the "
            f"network, e.g. {needed[0]}",
            hint="unset HF_HUB_OFFLINE to download, or copy an installed weights folder (docs/weights.md)",
        )
    with _model_lock(folder, model.name):
        (folder / STAMP_NAME).unlink(missing_ok=True)  # not installed until the new stamp is written
        for item in todo:
            fetched = item.part
            item.dest.parent.mkdir(parents=True, exist_ok=True)
            if force:
                item.part.unlink(missing_ok=True)
            if (source := cached[item.entry.path]) is not None:
                shutil.copyfile(source, item.part)
            elif item.entry.url:
                _fetch_url(item, progress)
            else:
                fetched = _from_hub(model, item, folder / STAGING_DIR, progress, force)
            _install(fetched, item.dest, item.entry, item.label, progress)
        write_stamp(folder, model.name, {i.entry.path: (i.dest.stat().st_size, i.entry.sha256) for i in plan})
        shutil.rmtree(folder / STAGING_DIR, ignore_errors=True)
    return InstallResult(folder, tuple(i.entry.path for i in todo), False)


def _install(fetched: Path, dest: Path, entry: WeightFile, label: str, progress: Progress | None) -> None:
    """Move ``fetched`` to ``dest`` if its sha256 is the manifest's; otherwise delete it and raise."""
    actual, size = sha256_file(fetched, progress, label), fetched.stat().st_size
    if actual != entry.sha256:
        fetched.unlink(missing_ok=True)
        raise VerificationError(
            f"sha256 mismatch for {label}: expected {entry.sha256}, got {actual} ({size} bytes); "
            "the partial file was deleted",
            hint="run again with --force; if it happens again, the source no longer serves the pinned file",
        )
    if size != entry.size:  # the bytes are right, so the manifest's (derived) size is not
        logger.warning("%s is %d bytes, the manifest says %d; the sha256 matches", label, size, entry.size)
    os.replace(fetched, dest)


def _hf_cached(model: ModelSpec, entry: WeightFile, force: bool) -> Path | None:
    """The file in the Hugging Face cache at one of the pinned revisions (not when forced)."""
    from huggingface_hub import try_to_load_from_cache

    for src in () if entry.url or force else model.hub:
        if isinstance(found := try_to_load_from_cache(src.repo, entry.path, revision=src.revision), str):
            return Path(found)
    return None


def _from_hub(
    model: ModelSpec, item: FilePlan, staging: Path, progress: Progress | None, force: bool
) -> Path:
    """The file of ``item`` from the first hub source that serves it, downloaded into ``staging``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import tqdm

    class Bar(tqdm):  # huggingface_hub reports the bytes here; cassr draws its own bars
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.received = kwargs.get("initial") or 0

        def update(self, n: float | None = 1) -> None:
            self.received += n or 0
            if progress is not None:
                progress(item.label, int(self.received), item.entry.size)

    options = dict(endpoint=hub_endpoint(), local_dir=staging, force_download=force, tqdm_class=Bar)
    failures = []
    for src in model.hub:
        try:
            return Path(hf_hub_download(src.repo, item.entry.path, revision=src.revision, **options))
        except _CODING_ERRORS:
            raise
        except Exception as err:  # whichever HTTP stack huggingface_hub uses: say what failed, try the next
            failures.append(f"{src.repo}: {_reason(err)}")
            logger.warning("%s: %s", item.label, failures[-1])
    hint = "check the connection and HF_ENDPOINT"
    if any(" 401 " in f or " 403 " in f for f in failures):
        hint = "set HF_TOKEN (or run `hf auth login`) if the repository needs it"
    raise DownloadError(f"{item.label}: " + "; ".join(failures), hint=hint)


def _reason(err: BaseException) -> str:
    """One line: the HTTP status and URL of a failed request, else the innermost message."""
    inner = err.__cause__ or err
    response = getattr(err, "response", None) or getattr(inner, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"HTTP {response.status_code} ({type(err).__name__}) at {response.url}"
    text = " ".join(str(inner).split()) or type(inner).__name__
    return "connection refused" if "Connection refused" in text else text[:200]


def _model_lock(folder: Path, name: str) -> Any:
    """One install per model folder at a time (a context manager); a second one fails at once."""
    from filelock import FileLock, Timeout

    try:
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(folder / ".cassr-download.lock", timeout=0).acquire()
    except Timeout:  # before OSError, which it is
        busy = f"another cassr process is installing {name!r} in {folder.parent}"
        raise DownloadError(busy, hint="wait for it to finish, then run the command again") from None
    except OSError as err:
        raise DownloadError(f"cannot create {folder}: {err.strerror or err}") from None


def _fetch_url(item: FilePlan, progress: Progress | None) -> None:
    """Append the file's URL to ``item.part`` from where it stops (``Range``), with retries."""
    import http.client
    from urllib.parse import urlsplit
    from urllib.request import HTTPError, Request, urlopen

    url, part, label, error = item.entry.url or "", item.part, item.label, ""
    for retry in range(ATTEMPTS):
        if retry:
            logger.warning("%s: %s; retrying (%d/%d)", label, error, retry, ATTEMPTS - 1)
            time.sleep(2.0 ** (retry - 1))
        have = part.stat().st_size if part.is_file() else 0
        # identity: sizes and Range offsets count the file's own bytes, never a compressed encoding
        headers = {"User-Agent": f"cassr/{__version__}", "Accept-Encoding": "identity"}
        request = Request(url, headers={**headers, "Range": f"bytes={have}-"} if have else headers)
        try:
            with urlopen(request, timeout=TIMEOUT) as response:
                pos = have if response.status == 206 else 0  # 200: the whole file
                if pos and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    raise http.client.HTTPException(f"the server did not resume at byte {have}")
                length = response.headers.get("Content-Length", "")
                total = pos + int(length) if length.isdigit() else None
                with part.open("r+b" if pos else "wb") as out:
                    out.seek(pos)
                    while chunk := response.read(1 << 20):
                        pos += out.write(chunk)
                        if progress is not None:
                            progress(label, pos, total or item.entry.size)
            if total is None or pos >= total:
                return
            error = f"transfer ended early at {pos} of {total} bytes"
        except HTTPError as err:
            if err.code in (404, 410):
                hint = "the source may have moved; check the manifest"
                raise DownloadError(f"{label}: not found (HTTP {err.code}) at {url}", hint=hint) from None
            if err.code == 416:  # nothing left to resume from: start over
                part.unlink(missing_ok=True)
            error = f"HTTP {err.code} from {urlsplit(url).netloc}"
        except (OSError, http.client.HTTPException) as err:  # connection refused, reset, timeout, disk full
            error = f"{urlsplit(url).netloc}: {_reason(getattr(err, 'reason', err))}"
    hint = "check the connection (and the disk) and run the command again (it resumes)"
    raise DownloadError(f"{label}: {error} (gave up after {ATTEMPTS} attempts)", hint=hint)
