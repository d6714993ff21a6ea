"""Downloading and installing a model: resumable, retried, sha256-verified, atomic.

For each file of a model (:class:`~cassr_cli.weights.manifest.WeightFile`):

1. If the Hugging Face cache already holds it at the pinned revision, it is copied from there (no network).
2. Otherwise it is streamed into ``<dest>.part`` while its sha256 is computed. An existing ``.part`` is
   resumed with an HTTP ``Range`` request. Connection errors, timeouts, cut transfers, 429 and 5xx are
   retried with exponential back-off; 404 moves on to the next mirror.
3. Only a file whose sha256 (and size, unless the size is marked derived) matches the manifest is renamed
   into place with ``os.replace``. A mismatch deletes the ``.part`` and raises
   :class:`~cassr_cli.weights.transfer.VerificationError` (a ``DownloadError``) with both hashes.
4. When every file is in place, the install stamp is written (:func:`cassr_cli.weights.store.write_stamp`).
   Before any file of a stamped model is replaced, the stamp is removed, so a half-updated model never
   counts as installed.

Hub URLs are built at call time from ``HF_ENDPOINT``; ``HF_TOKEN`` (through ``huggingface_hub``) is sent
only to that endpoint; ``HF_HUB_OFFLINE=1`` refuses any network access with a clear message. Progress is
reported through a plain callback (no Rich here). Heavy imports (the HTTP client, ``huggingface_hub``)
happen inside the functions. The HTTP transfer of one file lives in :mod:`cassr_cli.weights.transfer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cassr_cli.errors import ConfigError, DownloadError
from cassr_cli.weights.manifest import HubSource, ModelSpec, WeightFile
from cassr_cli.weights.paths import model_dir
from cassr_cli.weights.store import (
    FilePlan,
    part_path,
    plan_model,
    remove_stamp,
    sha256_file,
    write_stamp,
)
from cassr_cli.weights.transfer import (
    CHUNK,
    ProgressCallback,
    RetryPolicy,
    SourceNotFound,
    VerificationError,
    download_to_part,
    open_client,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".cassr-download.lock"
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class DownloadSettings:
    """Knobs of a download. ``env`` defaults to ``os.environ``, read at call time."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    use_hf_cache: bool = True
    env: Mapping[str, str] | None = None

    def environ(self) -> Mapping[str, str]:
        """The environment to read ``HF_*`` variables from."""
        return os.environ if self.env is None else self.env


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_model` did."""

    model: ModelSpec
    folder: Path
    fetched: tuple[str, ...]
    already_installed: bool
    bytes_downloaded: int


# --- environment --------------------------------------------------------------------------------------


def offline_mode(env: Mapping[str, str] | None = None) -> bool:
    """True when ``HF_HUB_OFFLINE`` is ``1``/``true``/``yes``/``on`` (read now, not at import)."""
    env = os.environ if env is None else env
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_endpoint(env: Mapping[str, str] | None = None) -> str:
    """``$HF_ENDPOINT`` (without a trailing slash), else the public Hub."""
    env = os.environ if env is None else env
    return (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_url(source: HubSource, entry: WeightFile, endpoint: str) -> str:
    """``{endpoint}/{repo}/resolve/{revision}/{path}`` for ``entry`` in ``source``."""
    from urllib.parse import quote

    return f"{endpoint}/{source.repo}/resolve/{source.revision}/{quote(entry.hub_path)}"


def file_urls(
    model: ModelSpec, entry: WeightFile, env: Mapping[str, str] | None = None
) -> list[tuple[str, bool]]:
    """The URLs to try for ``entry``, in order, each with ``is_hub``."""
    if entry.url:
        return [(entry.url, False)]
    endpoint = hub_endpoint(env)
    return [(hub_url(src, entry, endpoint), True) for src in model.hub]


def _hf_token(env: Mapping[str, str]) -> str | None:
    if env is not os.environ:  # an explicit environment (tests, embedding): read it directly
        return env.get("HF_TOKEN") or None
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception as err:  # e.g. a failing OIDC exchange: say so instead of sending nothing silently
        raise DownloadError(f"cannot read the Hugging Face token: {err}") from None


def _hf_cache_dir(env: Mapping[str, str]) -> str | None:
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


# --- installing ---------------------------------------------------------------------------------------


def install_model(
    weights_dir: Path,
    model: ModelSpec,
    *,
    force: bool = False,
    settings: DownloadSettings | None = None,
    progress: ProgressCallback | None = None,
) -> InstallResult:
    """Make ``model`` installed and verified in ``weights_dir``; download only what is missing.

    Raises:
        DownloadError: offline, network or HTTP failure, sha256/size mismatch, disk full, another
            download of the same model running (exit 3).
        ConfigError: ``weights_dir`` is inside the installed package.
    """
    settings = settings or DownloadSettings()
    env = settings.environ()
    _refuse_package_dir(weights_dir)
    folder = model_dir(weights_dir, model.name)
    if not folder.is_dir():  # offline with nothing installed: fail before creating anything
        _refuse_offline(model, [f for f in model.files if not _hf_cached(model, f, settings)], env)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create {folder}: {err.strerror or err}") from None
    with _model_lock(folder, model.name):
        plan = plan_model(weights_dir, model, force=force)
        if plan.installed:
            return InstallResult(model, folder, (), True, 0)
        verified: dict[str, tuple[int, str]] = {}
        todo: list[FilePlan] = []
        for item in plan.files:
            if item.action == "present" or (
                item.action == "check" and _existing_file_ok(item, model, progress)
            ):
                verified[item.entry.path] = (item.dest.stat().st_size, item.entry.sha256)
            else:
                todo.append(item)
        cached = {i.entry.path: _hf_cached(model, i.entry, settings) for i in todo}
        _refuse_offline(model, [i.entry for i in todo if not cached[i.entry.path]], env)  # before any change
        if todo:
            _check_disk_space(folder, sum(i.entry.size for i in todo))
        for item in todo if force else ():
            part_path(item.dest).unlink(missing_ok=True)
        remove_stamp(folder)  # from here on the model does not count as installed until the new stamp
        downloaded = 0
        with open_client(
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout
        ) as client:
            for item in todo:
                item.dest.parent.mkdir(parents=True, exist_ok=True)
                source = cached.get(item.entry.path)
                if source and _copy_verified(source, item, model, progress):
                    verified[item.entry.path] = (item.dest.stat().st_size, item.entry.sha256)
                    continue
                size, fetched = _fetch(client, model, item.entry, item.dest, settings, progress)
                verified[item.entry.path] = (size, item.entry.sha256)
                downloaded += fetched
        write_stamp(folder, model.name, verified)
    return InstallResult(model, folder, tuple(i.entry.path for i in todo), False, downloaded)


def _refuse_offline(model: ModelSpec, entries: list[WeightFile], env: Mapping[str, str]) -> None:
    """Raise the offline error if ``entries`` would need the network while ``HF_HUB_OFFLINE`` is set."""
    if entries and offline_mode(env):
        raise DownloadError(
            f"offline mode (HF_HUB_OFFLINE={env.get('HF_HUB_OFFLINE')}): {model.name} needs "
            f"{len(entries)} file(s) from the network, e.g. {entries[0].path}",
            hint="unset HF_HUB_OFFLINE to download, or copy an installed weights folder here (docs/weights.md)",
        )


def _hf_cached(model: ModelSpec, entry: WeightFile, settings: DownloadSettings) -> str | None:
    """The file in the local Hugging Face cache at one of the pinned revisions, if it is there."""
    if not settings.use_hf_cache or entry.url or not model.hub:
        return None
    env = settings.environ()
    from huggingface_hub import try_to_load_from_cache

    for source in model.hub:
        found = try_to_load_from_cache(
            source.repo, entry.hub_path, revision=source.revision, cache_dir=_hf_cache_dir(env)
        )
        if isinstance(found, str):
            return found
    return None


def _copy_verified(source: str, item: FilePlan, model: ModelSpec, progress: ProgressCallback | None) -> bool:
    """Copy a Hugging Face cache file into place if its sha256 is the manifest's."""
    label = f"{model.name}/{item.entry.path}"
    part = part_path(item.dest)
    digest = hashlib.sha256()
    done = 0
    with open(source, "rb") as src, open(part, "wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label, done, item.entry.size)
    if digest.hexdigest() != item.entry.sha256:
        part.unlink(missing_ok=True)
        logger.warning("%s: the Hugging Face cache copy has another sha256; ignoring it", label)
        return False
    os.replace(part, item.dest)
    logger.info("%s: copied from the Hugging Face cache (%s)", label, source)
    return True


def _existing_file_ok(item: FilePlan, model: ModelSpec, progress: ProgressCallback | None) -> bool:
    label = f"{model.name}/{item.entry.path}"
    actual = sha256_file(item.dest, progress=progress, label=label)
    if actual == item.entry.sha256:
        logger.info("%s: existing file verified", label)
        return True
    logger.info("%s: existing file differs from the manifest; downloading it again", label)
    return False


def _refuse_package_dir(weights_dir: Path) -> None:
    package = Path(__file__).resolve().parents[1]
    target = weights_dir.expanduser().resolve()
    if target == package or package in target.parents:
        raise ConfigError(f"refusing to write weights into the cassr package directory ({target})")


def _check_disk_space(folder: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise DownloadError(
            f"not enough disk space in {folder}: need up to {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            hint="free some space or choose another --weights-dir",
        )


@contextlib.contextmanager
def _model_lock(folder: Path, name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, verification still protects
        yield
        return
    with open(folder / LOCK_NAME, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(
                f"another cassr process is installing {name!r} in {folder.parent}",
                hint="wait for it to finish, then run the command again",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- one file -----------------------------------------------------------------------------------------


def _fetch(
    client: Any,
    model: ModelSpec,
    entry: WeightFile,
    dest: Path,
    settings: DownloadSettings,
    progress: ProgressCallback | None,
) -> tuple[int, int]:
    """Download one file from its sources in order and install it; returns ``(size, bytes_transferred)``."""
    env = settings.environ()
    _refuse_offline(model, [entry], env)  # e.g. after a Hugging Face cache copy turned out to differ
    label = f"{model.name}/{entry.path}"
    part = part_path(dest)
    failures: list[DownloadError] = []
    for url, is_hub in file_urls(model, entry, env):
        headers = {}
        if is_hub:
            token = _hf_token(env)
            if token:
                headers["Authorization"] = f"Bearer {token}"
        try:
            size, transferred = download_to_part(
                client, url, headers, part, entry, label, settings.retry, progress
            )
        except VerificationError:
            raise
        except SourceNotFound as err:
            failures.append(DownloadError(str(err), hint="the source may have moved; check the manifest"))
            logger.warning("%s", err)
            continue
        except DownloadError as err:
            failures.append(err)
            logger.warning("%s", err.message)
            continue
        os.replace(part, dest)
        return size, transferred
    retry_hint = "check the connection and run the command again (it resumes)"
    if len(failures) == 1:
        raise DownloadError(failures[0].message, hint=failures[0].hint or retry_hint)
    raise DownloadError(
        f"all {len(failures)} sources failed for {label}: " + "; ".join(f.message for f in failures),
        hint=next((f.hint for f in failures if f.hint), retry_hint),
    )
