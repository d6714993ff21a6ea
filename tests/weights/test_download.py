"""Downloads against a throwaway HTTP server on 127.0.0.1: verification, resume, retries, mirrors, Hub
endpoint/token/offline handling, the Hugging Face cache, install stamps and the cheap/full integrity checks.

The server and manifest helpers here are also used by ``tests/cli/test_weights_cli.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cassr_cli.cli.weights_cmd import model_status
from cassr_cli.errors import ConfigError, DownloadError, WeightsCorruptError, WeightsMissingError
from cassr_cli.weights.download import VerificationError, install_model
from cassr_cli.weights.manifest import Manifest, ModelSpec, load_manifest
from cassr_cli.weights.store import (
    STAMP_NAME,
    check_model,
    download_command,
    read_stamp,
    require_installed,
)

REPO = "testorg/tiny-sd"
REVISION = "0123456789abcdef0123456789abcdef01234567"
MIRROR = "mirrororg/tiny-sd"
MIRROR_REVISION = "89abcdef0123456789abcdef0123456789abcdef"


# --- the throwaway server ---------------------------------------------------------------------------------


@dataclass
class FileServer:
    """Serves ``files`` (URL path → bytes) with Range support, and the Hub's ``resolve`` API for what
    :meth:`serve_hub` registers; switches change its behaviour.

    * ``cut[path] = n``: the next GET of ``path`` announces the full length, sends ``n`` body bytes and
      closes the connection (one-shot).
    * ``fail[path] = [503, ...]``: the next requests (HEAD or GET) answer these statuses first.
    * ``ignore_range``: answer 200 with the whole file even when a Range is asked for.
    * ``redirect[path] = url``: answer 302 to ``url`` (as the Hub does to its CDN for LFS files).
    * ``requests``: every request seen: method, path, Range and Authorization headers; ``sent``: the body
      bytes sent per path.
    """

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    hub: dict[str, dict[str, str]] = field(default_factory=dict)  # path → Hub headers
    cut: dict[str, int] = field(default_factory=dict)
    fail: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: bool = False
    redirect: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)  # path → body bytes sent, all requests together

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve_hub(self, repo: str, revision: str, files: dict[str, bytes], cdn: FileServer | None = None) -> None:
        """Serve ``files`` as the Hub does at ``/{repo}/resolve/{revision}/{path}``: ``X-Repo-Commit``, an
        ``ETag`` that is the git blob sha1 of a small file, and for a large (LFS) file a 302 to ``cdn`` with
        ``X-Linked-Etag`` = its sha256 and ``X-Linked-Size`` (or a plain 200 with ETag = sha256)."""
        for rel, data in files.items():
            path = f"/{repo}/resolve/{revision}/{rel}"
            self.files[path] = data
            if len(data) < 100_000:
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                self.hub[path] = {"X-Repo-Commit": revision, "ETag": f'"{blob}"'}
                continue
            self.hub[path] = {"X-Repo-Commit": revision, "ETag": f'"{sha(data)}"'}
            if cdn is not None:
                cdn.files[f"/lfs/{sha(data)}"] = data
                self.redirect[path] = cdn.url(f"/lfs/{sha(data)}")
                self.hub[path].update({"X-Linked-Etag": f'"{sha(data)}"', "X-Linked-Size": str(len(data))})

    def ranges(self, path: str) -> list[str | None]:
        return [r["range"] for r in self.requests if r["path"] == path and r["method"] == "GET"]

    def methods(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]


def _handler(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - http.server API
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = self.path
            server.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "range": self.headers.get("Range"),
                    "auth": self.headers.get("Authorization"),
                }
            )
            queued = server.fail.get(path)
            if queued and not (body and path in server.cut):
                self._empty(queued.pop(0))
                return
            extra = server.hub.get(path, {})
            if path in server.redirect:
                self._empty(302, {"Location": server.redirect[path], **extra})
                return
            data = server.files.get(path)
            if data is None:
                known = any(p.startswith(path.split("/resolve/")[0] + "/resolve/") for p in server.hub)
                code = {"X-Error-Code": "EntryNotFound" if known else "RepoNotFound"} if "/resolve/" in path else {}
                self._empty(404, code)
                return
            start = 0
            wanted = self.headers.get("Range")
            if wanted and not server.ignore_range:
                match = re.fullmatch(r"bytes=(\d+)-", wanted)
                assert match, wanted
                start = int(match.group(1))
                if start >= len(data):
                    self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if not body:
                return
            cut = server.cut.pop(path, None)
            body_bytes = data[start:] if cut is None else data[start : start + cut]
            server.sent[path] = server.sent.get(path, 0) + len(body_bytes)
            if cut is not None:
                self.wfile.write(body_bytes)
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body_bytes)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up early (size mismatch, cut tests) is expected here


@contextlib.contextmanager
def _serving() -> Iterator[FileServer]:
    state = FileServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    """A FileServer on 127.0.0.1 (random port), stopped after the test."""
    with _serving() as state:
        yield state


@pytest.fixture
def cdn() -> Iterator[FileServer]:
    """A second FileServer: another origin, like the Hub's CDN."""
    with _serving() as state:
        yield state


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """Allow downloads (tests/conftest.py sets HF_HUB_OFFLINE=1, which huggingface_hub reads at import),
    keep every request on 127.0.0.1, use an empty Hugging Face cache, and record huggingface_hub's
    back-off pauses instead of sleeping them (returned)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(key, raising=False)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    return pauses


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- test manifests ---------------------------------------------------------------------------------------


def blob(size: int, seed: int) -> bytes:
    """Deterministic random bytes."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(path: str, data: bytes, *, url: str | None = None, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "size": len(data), "sha256": sha(data)}
    if url:
        entry["url"] = url
    entry.update(overrides)
    return entry


def model_entry(
    name: str,
    files: list[dict[str, Any]],
    *,
    kind: str = "activation",
    default: bool = True,
    hub: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    return {"name": name, "kind": kind, "default": default, "files": files, "hub": hub or []}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def manifest_text(models: list[dict[str, Any]]) -> str:
    lines = ["schema = 1", ""]
    for model in models:
        lines += [
            "[[model]]",
            f"name = {toml_value(model['name'])}",
            f"kind = {toml_value(model['kind'])}",
            f"default = {toml_value(model['default'])}",
            'licence = { id = "Test-1.0", name = "Test Licence", note = "test weights, not a real model" }',
        ]
        if model["hub"]:
            sources = ", ".join(f'{{ repo = "{r}", revision = "{v}" }}' for r, v in model["hub"])
            lines.append(f"hub = [{sources}]")
        for entry in model["files"]:
            lines.append("[[model.files]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
        lines.append("")
    return "\n".join(lines)


def write_manifest(tmp_path: Path, models: list[dict[str, Any]]) -> Path:
    path = tmp_path / "test-manifest.toml"
    path.write_text(manifest_text(models), encoding="utf-8")
    return path


@dataclass
class Setup:
    """A two-model test manifest served by ``server``: ``act`` (a direct URL) and ``base`` (Hub style)."""

    manifest_path: Path
    manifest: Manifest
    weights: Path
    act_data: bytes
    base_files: dict[str, bytes]

    def model(self, name: str) -> ModelSpec:
        found = self.manifest.get(name)
        assert found is not None
        return found


def make_setup(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch, cdn: FileServer | None = None
) -> Setup:
    """Serve random files and write a manifest for them; HF_ENDPOINT points at the server (the large Hub
    file is redirected to ``cdn`` when one is given)."""
    act = blob(300_000, 1)
    server.files["/releases/act.pth"] = act
    base = {"model_index.json": b'{"_class_name": "Tiny"}\n', "unet/weights.safetensors": blob(200_000, 2)}
    server.serve_hub(REPO, REVISION, base, cdn=cdn)
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    models = [
        model_entry("act", [file_entry("act.pth", act, url=server.url("/releases/act.pth"))]),
        model_entry(
            "base",
            [file_entry(p, d) for p, d in base.items()],
            kind="base",
            hub=[(REPO, REVISION)],
        ),
    ]
    path = write_manifest(tmp_path, models)
    return Setup(path, load_manifest(path), tmp_path / "weights", act, base)


@pytest.fixture
def setup(tmp_path: Path, server: FileServer, online: list[float], monkeypatch: pytest.MonkeyPatch) -> Setup:
    return make_setup(tmp_path, server, monkeypatch)


# --- full download ----------------------------------------------------------------------------------------


def test_full_download_verifies_installs_and_stamps(
    setup: Setup, server: FileServer
) -> None:
    seen: list[tuple[str, int, int]] = []
    result = install_model(
        setup.weights, setup.model("act"), progress=lambda *a: seen.append(a)
    )
    folder = setup.weights / "act"
    assert result.folder == folder and not result.already_installed
    assert (folder / "act.pth").read_bytes() == setup.act_data
    assert not list(folder.glob("*.part"))
    stamp = json.loads((folder / STAMP_NAME).read_text())
    assert stamp["name"] == "act"
    assert stamp["files"] == {"act.pth": {"size": len(setup.act_data), "sha256": sha(setup.act_data)}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp["installed_at"])
    assert seen[-1] == ("act/act.pth", len(setup.act_data), len(setup.act_data))
    assert require_installed(setup.weights, "act") == folder
    assert model_status(setup.weights, setup.model("act"))[0] == "installed"

    again = install_model(setup.weights, setup.model("act"))
    assert again.already_installed and len(server.requests) == 1  # nothing fetched the second time


def test_hub_files_come_through_huggingface_hub_at_the_pinned_revision_with_the_token(
    setup: Setup, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
    seen: list[tuple[str, int, int]] = []
    result = install_model(setup.weights, setup.model("base"), progress=lambda *a: seen.append(a))
    install_model(setup.weights, setup.model("act"))
    for rel, data in setup.base_files.items():
        assert (setup.weights / "base" / rel).read_bytes() == data
    hub = [r for r in server.requests if r["path"].startswith(f"/{REPO}/resolve/{REVISION}/")]
    assert {r["method"] for r in hub} == {"HEAD", "GET"}  # huggingface_hub's metadata call, then the bytes
    assert all(r["auth"] == "Bearer hf_test_token_123" for r in hub)
    direct = [r for r in server.requests if r["path"] == "/releases/act.pth"]
    assert direct and direct[0]["auth"] is None
    assert ("base/unet/weights.safetensors", 200_000, 200_000) in seen  # the progress callback saw the bytes
    assert result.fetched == ("model_index.json", "unet/weights.safetensors")
    leftovers = sorted(p.name for p in (setup.weights / "base").iterdir())
    assert leftovers == sorted([".cassr-download.lock", STAMP_NAME, "model_index.json", "unet"])  # no staging


def test_force_downloads_again(setup: Setup, server: FileServer) -> None:
    install_model(setup.weights, setup.model("act"))
    result = install_model(setup.weights, setup.model("act"), force=True)
    assert result.fetched == ("act.pth",) and len(server.requests) == 2


def test_force_starts_over_instead_of_resuming_a_stale_part(setup: Setup, server: FileServer) -> None:
    part = setup.weights / "act" / "act.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other download")
    install_model(setup.weights, setup.model("act"), force=True)
    assert server.ranges("/releases/act.pth") == [None]
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data


def test_existing_unstamped_file_is_rehashed_not_downloaded(
    setup: Setup, server: FileServer
) -> None:
    folder = setup.weights / "act"
    folder.mkdir(parents=True)
    (folder / "act.pth").write_bytes(setup.act_data)  # e.g. copied by hand
    result = install_model(setup.weights, setup.model("act"))
    assert result.fetched == () and server.requests == []
    assert read_stamp(folder) is not None


def test_an_unstamped_file_with_other_bytes_is_downloaded_again(setup: Setup, server: FileServer) -> None:
    folder = setup.weights / "act"
    folder.mkdir(parents=True)
    (folder / "act.pth").write_bytes(bytes(len(setup.act_data)))  # the right size, the wrong bytes
    result = install_model(setup.weights, setup.model("act"))
    assert result.fetched == ("act.pth",) and len(server.requests) == 1
    assert (folder / "act.pth").read_bytes() == setup.act_data


# --- resume, retries, back-off ----------------------------------------------------------------------------


def test_resume_after_a_cut_transfer_uses_range(
    setup: Setup, server: FileServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.cut["/releases/act.pth"] = 100_000
    server.fail["/releases/act.pth"] = [500] * 4  # every retry of this run fails too
    with pytest.raises(DownloadError, match=r"HTTP 500 from 127.0.0.1:\d+ \(gave up after 5 attempts\)"):
        install_model(setup.weights, setup.model("act"))
    assert "transfer ended early at 100000 of 300000 bytes" in caplog.text
    part = setup.weights / "act" / "act.pth.part"
    assert part.stat().st_size == 100_000
    assert not (setup.weights / "act" / "act.pth").exists() and read_stamp(setup.weights / "act") is None

    install_model(setup.weights, setup.model("act"))  # the next run resumes
    assert server.ranges("/releases/act.pth") == [None] + ["bytes=100000-"] * 5
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data
    assert not part.exists()
    assert server.sent["/releases/act.pth"] == len(setup.act_data)  # 100,000 bytes, then the rest once


def test_a_cut_transfer_is_retried_and_resumed_in_one_call(
    setup: Setup, server: FileServer, online: list[float]
) -> None:
    server.cut["/releases/act.pth"] = 12_345
    install_model(setup.weights, setup.model("act"))
    assert server.ranges("/releases/act.pth") == [None, "bytes=12345-"]
    assert online == [1.0]  # one pause before the retry
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data


def test_an_lfs_file_redirected_to_a_cdn_resumes_a_cut_and_gets_no_token(
    tmp_path: Path,
    server: FileServer,
    cdn: FileServer,
    online: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.constants

    # huggingface_hub writes (and so resumes) in chunks of this size (10 MB); small here to keep the test fast
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 10_000)
    setup = make_setup(tmp_path, server, monkeypatch, cdn=cdn)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    data = setup.base_files["unet/weights.safetensors"]
    blob_path = f"/lfs/{sha(data)}"
    cdn.cut[blob_path] = 50_000
    install_model(setup.weights, setup.model("base"))
    assert (setup.weights / "base" / "unet" / "weights.safetensors").read_bytes() == data
    assert cdn.ranges(blob_path) == [None, "bytes=50000-"]  # huggingface_hub resumed the cut transfer
    assert {r["auth"] for r in cdn.requests} == {None}  # the token stays on the Hub endpoint
    hub_path = f"/{REPO}/resolve/{REVISION}/unet/weights.safetensors"
    assert [m for m, p in server.methods() if p == hub_path] == ["HEAD"]  # metadata from the 302 itself


def test_server_errors_are_retried_with_exponential_backoff(
    setup: Setup, server: FileServer, online: list[float]
) -> None:
    server.fail["/releases/act.pth"] = [503, 500, 429]
    install_model(setup.weights, setup.model("act"))
    assert online == [1.0, 2.0, 4.0]
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data


def test_hub_server_errors_are_retried_by_huggingface_hub(
    setup: Setup, server: FileServer, online: list[float]
) -> None:
    hub_path = f"/{REPO}/resolve/{REVISION}/unet/weights.safetensors"
    server.fail[hub_path] = [503, 502]
    install_model(setup.weights, setup.model("base"))
    assert (setup.weights / "base" / "unet" / "weights.safetensors").read_bytes() == server.files[hub_path]
    assert [m for m, p in server.methods() if p == hub_path][:3] == ["HEAD", "HEAD", "HEAD"]
    assert online  # huggingface_hub paused between the attempts


def test_a_server_that_ignores_range_restarts_cleanly(
    setup: Setup, server: FileServer
) -> None:
    server.cut["/releases/act.pth"] = 5_000
    server.ignore_range = True
    install_model(setup.weights, setup.model("act"))
    assert server.ranges("/releases/act.pth") == [None, "bytes=5000-"]
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data


def test_a_part_as_long_as_the_file_is_started_over(setup: Setup, server: FileServer) -> None:
    part = setup.weights / "act" / "act.pth.part"  # e.g. interrupted between the last byte and the rename
    part.parent.mkdir(parents=True)
    part.write_bytes(bytes(len(setup.act_data)))
    install_model(setup.weights, setup.model("act"))
    assert server.ranges("/releases/act.pth") == [f"bytes={len(setup.act_data)}-", None]  # 416, then afresh
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data


# --- verification failures --------------------------------------------------------------------------------


def test_sha_mismatch_installs_nothing_and_names_both_hashes(
    tmp_path: Path, server: FileServer, online: list[float]
) -> None:
    real = blob(50_000, 3)
    claimed = blob(50_000, 4)  # same size, other bytes
    server.files["/f.bin"] = real
    path = write_manifest(
        tmp_path, [model_entry("m", [file_entry("f.bin", claimed, url=server.url("/f.bin"))])]
    )
    model = load_manifest(path).get("m")
    assert model is not None
    with pytest.raises(VerificationError) as info:
        install_model(tmp_path / "w", model)
    message = str(info.value)
    assert "m/f.bin" in message and f"expected {sha(claimed)}" in message and f"got {sha(real)}" in message
    assert info.value.exit_code == 3
    assert (
        sorted(p.name for p in (tmp_path / "w" / "m").iterdir() if not p.name.startswith(".cassr-download"))
        == []
    )
    assert len(server.requests) == 1  # a mismatch is not retried


def test_hub_sha_mismatch_installs_nothing(
    tmp_path: Path, server: FileServer, online: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    real, claimed = blob(150_000, 5), blob(150_000, 6)
    server.serve_hub(REPO, REVISION, {"w.bin": real})
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    model = load_manifest(
        write_manifest(tmp_path, [model_entry("m", [file_entry("w.bin", claimed)], hub=[(REPO, REVISION)])])
    ).get("m")
    assert model is not None
    with pytest.raises(VerificationError, match=f"sha256 mismatch for m/w.bin: expected {sha(claimed)}, got {sha(real)}"):
        install_model(tmp_path / "w", model)
    folder = tmp_path / "w" / "m"
    assert not (folder / "w.bin").exists() and not (folder / "w.bin.part").exists()
    assert read_stamp(folder) is None
    assert not [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size == len(real)]  # no copy kept


def test_a_failed_update_leaves_the_model_not_installed(
    tmp_path: Path, server: FileServer, online: list[float]
) -> None:
    old, new = {"a.bin": blob(40_000, 11), "b.bin": blob(40_000, 12)}, {"a.bin": blob(40_000, 13)}
    for rel, data in old.items():
        server.files[f"/v1/{rel}"] = data
    server.files["/v2/a.bin"] = new["a.bin"]  # the new b.bin is missing from the server

    def manifest(version: str, files: dict[str, bytes]) -> ModelSpec:
        entries = [file_entry(rel, data, url=server.url(f"/{version}/{rel}")) for rel, data in files.items()]
        found = load_manifest(write_manifest(tmp_path, [model_entry("m", entries)])).get("m")
        assert found is not None
        return found

    install_model(tmp_path / "w", manifest("v1", old))
    with pytest.raises(DownloadError, match="m/b.bin: not found"):
        install_model(tmp_path / "w", manifest("v2", {**old, **new, "b.bin": blob(40_000, 14)}))
    assert (tmp_path / "w" / "m" / "a.bin").read_bytes() == new["a.bin"]  # the same size as the old one …
    with pytest.raises(WeightsMissingError, match="incomplete"):  # … so only the stamp tells the mix apart
        require_installed(tmp_path / "w", "m")


def test_a_wrong_derived_size_is_reported_but_the_sha256_decides(
    tmp_path: Path, server: FileServer, online: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    data = blob(40_000, 6)
    server.files["/f.bin"] = data
    entry = file_entry("f.bin", data, url=server.url("/f.bin"), size=41_000, size_derived=True)
    model = load_manifest(write_manifest(tmp_path, [model_entry("m", [entry])])).get("m")
    assert model is not None
    with caplog.at_level(logging.WARNING, logger="cassr_cli"):
        install_model(tmp_path / "w", model)
    assert (tmp_path / "w" / "m" / "f.bin").read_bytes() == data
    assert "41000" in caplog.text and "40000" in caplog.text
    stamp = read_stamp(tmp_path / "w" / "m")
    assert stamp is not None and stamp["f.bin"][0] == 40_000  # the real size, so the load-time check passes
    require_installed(tmp_path / "w", "m")


# --- unreachable sources ----------------------------------------------------------------------------------


def test_404_is_a_clear_download_error(
    tmp_path: Path, server: FileServer, online: list[float]
) -> None:
    data = blob(1_000, 7)
    model = load_manifest(
        write_manifest(tmp_path, [model_entry("m", [file_entry("f.bin", data, url=server.url("/gone.bin"))])])
    ).get("m")
    assert model is not None
    with pytest.raises(
        DownloadError, match=r"m/f.bin: not found \(HTTP 404\) at http://127.0.0.1:\d+/gone.bin"
    ):
        install_model(tmp_path / "w", model)
    assert online == []  # a 404 is not retried


def test_connection_refused_is_retried_then_reported(
    tmp_path: Path, online: list[float]
) -> None:
    data = blob(1_000, 8)
    url = f"http://127.0.0.1:{closed_port()}/f.bin"
    model = load_manifest(
        write_manifest(tmp_path, [model_entry("m", [file_entry("f.bin", data, url=url)])])
    ).get("m")
    assert model is not None
    with pytest.raises(DownloadError) as info:
        install_model(tmp_path / "w", model)
    assert "m/f.bin: 127.0.0.1:" in str(info.value) and "connection refused" in str(info.value)
    assert "gave up after 5 attempts" in str(info.value)
    assert online == [1.0, 2.0, 4.0, 8.0]
    assert "\n" not in str(info.value)


def test_a_missing_mirror_falls_back_to_the_next_mirror(
    tmp_path: Path, server: FileServer, online: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(2_000, 9)
    server.serve_hub(MIRROR, MIRROR_REVISION, {"w.bin": data})
    monkeypatch.setenv("HF_ENDPOINT", server.base + "/")
    entry = model_entry("m", [file_entry("w.bin", data)], hub=[(REPO, REVISION), (MIRROR, MIRROR_REVISION)])
    model = load_manifest(write_manifest(tmp_path, [entry])).get("m")
    assert model is not None
    install_model(tmp_path / "w", model)
    assert server.methods() == [
        ("HEAD", f"/{REPO}/resolve/{REVISION}/w.bin"),  # 404 RepoNotFound
        ("HEAD", f"/{MIRROR}/resolve/{MIRROR_REVISION}/w.bin"),
        ("GET", f"/{MIRROR}/resolve/{MIRROR_REVISION}/w.bin"),
    ]
    assert (tmp_path / "w" / "m" / "w.bin").read_bytes() == data


def test_an_unreachable_hub_is_one_clear_line(
    tmp_path: Path, online: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(2_000, 10)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    model = load_manifest(
        write_manifest(tmp_path, [model_entry("m", [file_entry("w.bin", data)], hub=[(REPO, REVISION)])])
    ).get("m")
    assert model is not None
    with pytest.raises(DownloadError) as info:
        install_model(tmp_path / "w", model)
    assert str(info.value).startswith(f"m/w.bin: {REPO}: ") and "connection refused" in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 3
    assert "HF_ENDPOINT" in (info.value.hint or "")


# --- offline and the Hugging Face cache -------------------------------------------------------------------


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """What HF_HUB_OFFLINE=1 does when huggingface_hub is imported (it reads the variable then)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_offline_mode_refuses_without_any_request(
    setup: Setup, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    with pytest.raises(DownloadError, match=r"offline mode \(HF_HUB_OFFLINE is set\): base needs 2 file"):
        install_model(setup.weights, setup.model("base"))
    assert server.requests == []
    assert not setup.weights.exists()


def test_files_in_the_hugging_face_cache_install_offline(
    setup: Setup, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION
    for rel, data in setup.base_files.items():
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).write_bytes(data)
    offline(monkeypatch)
    result = install_model(setup.weights, setup.model("base"))
    assert server.requests == [] and result.fetched == ("model_index.json", "unet/weights.safetensors")
    require_installed(setup.weights, "base")
    assert (snapshot / "model_index.json").is_file()  # copied, the cache is left as it was


def test_a_tampered_hugging_face_cache_copy_is_not_installed(
    setup: Setup, server: FileServer
) -> None:
    import huggingface_hub.constants

    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "weights.safetensors").write_bytes(b"x" * 200_000)
    with pytest.raises(VerificationError, match="sha256 mismatch for base/unet/weights.safetensors") as info:
        install_model(setup.weights, setup.model("base"))
    assert "--force" in (info.value.hint or "")
    target = setup.weights / "base" / "unet" / "weights.safetensors"
    assert not target.exists() and read_stamp(setup.weights / "base") is None
    install_model(setup.weights, setup.model("base"), force=True)  # --force: not from the cache
    assert target.read_bytes() == setup.base_files["unet/weights.safetensors"]
    assert ("GET", f"/{REPO}/resolve/{REVISION}/unet/weights.safetensors") in server.methods()


# --- stamps and integrity checks --------------------------------------------------------------------------


def test_require_installed_missing_gives_the_exact_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "weights"
    monkeypatch.setenv("CASSR_WEIGHTS_DIR", str(weights))
    with pytest.raises(WeightsMissingError) as info:
        require_installed(weights, "sd21-base")
    assert info.value.hint == "run: cassr download-weights sd21-base"
    assert info.value.exit_code == 3
    other = tmp_path / "other dir"
    with pytest.raises(WeightsMissingError) as info:
        require_installed(other, "sd21-base")
    assert info.value.hint == f"run: cassr download-weights --weights-dir '{other}' sd21-base"


def test_truncation_is_caught_cheaply_and_alteration_by_verify(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASSR_WEIGHTS_DIR", str(setup.weights))
    install_model(setup.weights, setup.model("base"))
    target = setup.weights / "base" / "unet" / "weights.safetensors"
    original = target.read_bytes()

    flipped = bytearray(original)
    flipped[1234] ^= 0xFF
    target.write_bytes(bytes(flipped))
    require_installed(setup.weights, "base")  # same size: the cheap check cannot see it …
    _, problems = check_model(setup.weights, "base", rehash=True)  # … the full re-hash does
    assert [(p.path, p.kind, p.expected, p.actual) for p in problems] == [
        ("unet/weights.safetensors", "sha256", sha(original), sha(bytes(flipped)))
    ]

    target.write_bytes(original[:1000])
    with pytest.raises(WeightsCorruptError) as info:
        require_installed(setup.weights, "base")
    assert "unet/weights.safetensors: size expected 200000 bytes, got 1000 bytes" in str(info.value)
    assert info.value.hint == "run: cassr download-weights --force base"
    assert model_status(setup.weights, setup.model("base"))[0] == "corrupt"

    target.unlink()
    with pytest.raises(WeightsMissingError, match="1 file.* missing: unet/weights.safetensors"):
        require_installed(setup.weights, "base")


def test_a_damaged_stamp_is_reported_as_corrupt(setup: Setup) -> None:
    install_model(setup.weights, setup.model("act"))
    (setup.weights / "act" / STAMP_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(WeightsCorruptError, match="install stamp .* is damaged"):
        require_installed(setup.weights, "act")


def test_download_command_quotes_and_lists_names(tmp_path: Path) -> None:
    assert download_command(["a", "b"], tmp_path / "x y", force=True) == (
        f"cassr download-weights --force --weights-dir '{tmp_path / 'x y'}' a b"
    )


def test_a_second_concurrent_install_is_refused(setup: Setup) -> None:
    fcntl = pytest.importorskip("fcntl")
    folder = setup.weights / "act"
    folder.mkdir(parents=True)
    with open(folder / ".cassr-download.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another cassr process is installing 'act'"):
            install_model(setup.weights, setup.model("act"))


def test_weights_are_never_written_into_the_package(setup: Setup) -> None:
    import cassr_cli

    package = Path(cassr_cli.__file__).parent
    with pytest.raises(ConfigError, match="package directory"):
        install_model(package / "weights-here", setup.model("act"))
    assert not (package / "weights-here").exists()


def test_the_hub_endpoint_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from cassr_cli.weights.download import hub_endpoint

    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert hub_endpoint() == "https://mirror.example"
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub_endpoint() == "https://huggingface.co"


def test_rows_for_list_and_doctor(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from cassr_cli.cli.weights_cmd import model_rows
    from cassr_cli.weights.store import write_stamp

    def rows() -> dict[str, tuple[str, str]]:
        return {r["name"]: (r["status"], r["detail"]) for r in model_rows(setup.manifest, setup.weights)}

    monkeypatch.setenv("CASSR_WEIGHTS_DIR", str(setup.weights))
    assert rows() == {
        "act": ("missing", "run: cassr download-weights act"),
        "base": ("missing", "run: cassr download-weights base"),
    }
    install_model(setup.weights, setup.model("act"))
    extra = setup.weights / "my-adapter"
    extra.mkdir()
    (extra / "a.safetensors").write_bytes(b"x" * 10)
    write_stamp(extra, "my-adapter", {"a.safetensors": (10, sha(b"x" * 10))})
    (setup.weights / "stray").mkdir()
    found = rows()
    assert found["act"] == ("installed", "300.0 kB, Test Licence")
    assert found["base"][0] == "missing"
    assert found["my-adapter"][0] == "installed (not in manifest)"
    assert found["stray"][0] == "unknown folder"
