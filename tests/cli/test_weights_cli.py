"""`cassr download-weights` and `cassr weights list|verify` through the real command and its error boundary
(exit codes 0 / 2 / 3), against the throwaway HTTP server of ``tests/weights/test_download.py``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cassr_cli.cli.app import app
from cassr_cli.errors import WeightsCorruptError
from cassr_cli.weights.store import STAMP_NAME, require_installed


def _load_helpers() -> Any:
    """The server and manifest helpers, loaded by path (the test folders are not packages)."""
    name = "_cassr_weights_test_helpers"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "weights" / "test_download.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


helpers = _load_helpers()
server = helpers.server  # fixtures
online = helpers.online
FileServer = helpers.FileServer


@pytest.fixture
def setup(
    tmp_path: Path, server: Any, online: list[float], monkeypatch: pytest.MonkeyPatch
) -> Any:
    return helpers.make_setup(tmp_path, server, monkeypatch)


def run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def common(setup: Any) -> list[str]:
    return ["--manifest", str(setup.manifest_path), "--weights-dir", str(setup.weights)]


# --- download-weights -------------------------------------------------------------------------------------


def test_download_defaults_verify_stamp_and_print_licences(setup: Any, server: Any) -> None:
    result = run("download-weights", *common(setup))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(setup.weights / "act"), str(setup.weights / "base")]
    assert "act: installed and verified" in result.stderr
    assert result.stderr.count("licence: Test Licence — test weights, not a real model") == 2
    assert (setup.weights / "act" / "act.pth").read_bytes() == setup.act_data
    for rel, data in setup.base_files.items():
        assert (setup.weights / "base" / rel).read_bytes() == data
    assert (setup.weights / "base" / STAMP_NAME).is_file()

    assert [m for m, _ in server.methods()] == ["GET"] + ["HEAD", "GET"] * 2  # the Hub: metadata, then bytes
    again = run("download-weights", *common(setup))
    assert again.exit_code == 0 and "act: already installed" in again.stderr and "base: already" in again.stderr
    assert len(server.requests) == 5  # nothing fetched the second time


def test_quiet_still_prints_the_licence_line(setup: Any) -> None:
    result = run("download-weights", *common(setup), "-q", "act")
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    assert "licence: Test Licence" in result.stderr


def test_dry_run_lists_files_and_total_and_downloads_nothing(setup: Any, server: Any) -> None:
    result = run("download-weights", *common(setup), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("act/act.pth\t300.0 kB\tdownload\thttp://127.0.0.1:")
    assert any(line.startswith("base/unet/weights.safetensors\t200.0 kB\tdownload\t") for line in lines)
    assert any(f"/testorg/tiny-sd/resolve/{helpers.REVISION}/model_index.json" in line for line in lines)
    total = len(setup.act_data) + sum(len(d) for d in setup.base_files.values())
    assert lines[-1].startswith(f"total: 3 file(s) to fetch, {total:,} bytes")
    assert server.requests == []
    assert not setup.weights.exists()


def test_progress_bars_show_when_stderr_is_a_terminal(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cassr_cli.cli import ui

    monkeypatch.setattr(ui, "is_interactive", lambda state: True)
    result = run("download-weights", *common(setup), "act")
    assert result.exit_code == 0, result.output
    assert "act/act.pth" in result.stderr and "300.0/300.0 kB" in result.stderr


def test_sha_mismatch_exits_3_with_both_hashes_and_installs_nothing(
    tmp_path: Path, server: Any, online: list[float]
) -> None:
    real, claimed = helpers.blob(10_000, 1), helpers.blob(10_000, 2)
    server.files["/m.bin"] = real
    manifest = helpers.write_manifest(
        tmp_path, [helpers.model_entry("m", [helpers.file_entry("m.bin", claimed, url=server.url("/m.bin"))])]
    )
    weights = tmp_path / "w"
    result = run("download-weights", "--manifest", str(manifest), "--weights-dir", str(weights))
    assert result.exit_code == 3
    assert (
        f"sha256 mismatch for m/m.bin: expected {helpers.sha(claimed)}, got {helpers.sha(real)}"
        in result.stderr
    )
    assert not (weights / "m" / "m.bin").exists() and not (weights / "m" / "m.bin.part").exists()
    assert not (weights / "m" / STAMP_NAME).exists()


def test_404_exits_3_with_a_clear_line(
    tmp_path: Path, server: Any, online: list[float]
) -> None:
    data = helpers.blob(100, 3)
    manifest = helpers.write_manifest(
        tmp_path,
        [helpers.model_entry("m", [helpers.file_entry("m.bin", data, url=server.url("/missing.bin"))])],
    )
    result = run("download-weights", "--manifest", str(manifest), "--weights-dir", str(tmp_path / "w"))
    assert result.exit_code == 3
    assert "error: m/m.bin: not found (HTTP 404) at http://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.output


def test_connection_refused_exits_3_after_retries(tmp_path: Path, online: list[float]) -> None:
    data = helpers.blob(100, 4)
    url = f"http://127.0.0.1:{helpers.closed_port()}/m.bin"
    manifest = helpers.write_manifest(
        tmp_path, [helpers.model_entry("m", [helpers.file_entry("m.bin", data, url=url)])]
    )
    result = run("download-weights", "--manifest", str(manifest), "--weights-dir", str(tmp_path / "w"))
    assert result.exit_code == 3
    assert "m/m.bin: 127.0.0.1:" in result.stderr and "connection refused" in result.stderr
    assert "hint: check the connection" in result.stderr and "run the command again (it resumes)" in result.stderr
    assert online == [1.0, 2.0, 4.0, 8.0]  # the back-off pauses, recorded instead of slept


def test_offline_exits_3_without_touching_the_server(
    setup: Any, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    helpers.offline(monkeypatch)
    result = run("download-weights", *common(setup), "base")
    assert result.exit_code == 3
    assert (
        "offline mode (HF_HUB_OFFLINE is set)" in result.stderr and "hint: unset HF_HUB_OFFLINE" in result.stderr
    )
    assert server.requests == []


def test_hub_token_is_sent_as_bearer(setup: Any, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_cli_token")
    assert run("download-weights", *common(setup), "base").exit_code == 0
    assert {r["auth"] for r in server.requests} == {"Bearer hf_cli_token"}


def test_unknown_model_is_a_usage_error_listing_names(setup: Any) -> None:
    result = run("download-weights", *common(setup), "nope")
    assert result.exit_code == 2
    assert "unknown model 'nope'; valid names: act, base" in result.stderr
    verify = run("weights", "verify", *common(setup), "nope")
    assert verify.exit_code == 2 and "valid names: act, base" in verify.stderr


def test_a_malformed_manifest_is_a_usage_error_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'schema = 1\n[[model]]\nname = "m"\nkind = "base"\n'
        'licence = { id = "X", name = "X", note = "n" }\n'
        '[[model.files]]\npath = "a"\nsize = 1\nsha256 = "xyz"\nurl = "https://example.invalid/a"\n',
        encoding="utf-8",
    )
    result = run("download-weights", "--manifest", str(bad), "--dry-run")
    assert result.exit_code == 2
    assert f"manifest {bad}: model 'm' file 'a'.sha256: expected 64 lowercase hex digits" in result.stderr


def test_cassr_manifest_environment_variable_is_used(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASSR_MANIFEST", str(setup.manifest_path))
    monkeypatch.setenv("CASSR_WEIGHTS_DIR", str(setup.weights))
    result = run("download-weights", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("act/act.pth\t")


# --- weights list / verify --------------------------------------------------------------------------------


def _statuses(setup: Any) -> dict[str, str]:
    result = run("weights", "list", *common(setup), "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row["status"] for row in json.loads(result.stdout)}


def test_list_before_and_after_download(setup: Any, server: Any) -> None:
    assert _statuses(setup) == {"act": "missing", "base": "missing"}
    table = run("weights", "list", *common(setup))
    assert table.stdout.splitlines()[0].split() == [
        "NAME",
        "KIND",
        "DEFAULT",
        "STATUS",
        "SIZE",
        "LICENCE",
        "DETAIL",
    ]

    server.cut["/releases/act.pth"] = 1_000
    server.fail["/releases/act.pth"] = [500] * 4  # the retries after the cut fail too: a .part stays
    assert run("download-weights", *common(setup), "act").exit_code == 3
    assert run("download-weights", *common(setup), "base").exit_code == 0
    assert _statuses(setup) == {"act": "partial", "base": "installed"}

    assert run("download-weights", *common(setup), "act").exit_code == 0
    assert _statuses(setup) == {"act": "installed", "base": "installed"}
    row = run("weights", "list", *common(setup)).stdout.splitlines()[1].split()
    assert row[:4] == ["act", "activation", "yes", "installed"] and "Test" in row


def test_verify_passes_then_catches_a_flipped_byte(setup: Any) -> None:
    assert run("download-weights", *common(setup)).exit_code == 0
    ok = run("weights", "verify", *common(setup))
    assert ok.exit_code == 0, ok.output
    assert "act: ok (1 files re-hashed)" in ok.stderr and "base: ok (2 files re-hashed)" in ok.stderr

    target = setup.weights / "base" / "unet" / "weights.safetensors"
    data = bytearray(target.read_bytes())
    data[777] ^= 0x01
    target.write_bytes(bytes(data))
    assert _statuses(setup)["base"] == "installed"  # same size: the cheap status cannot tell …
    bad = run("weights", "verify", *common(setup))  # … verify can
    assert bad.exit_code == 3
    assert (
        f"base/unet/weights.safetensors: sha256 expected {helpers.sha(setup.base_files['unet/weights.safetensors'])}, "
        f"got {helpers.sha(bytes(data))}" in bad.stderr
    )
    assert "1 file(s) failed verification: base/unet/weights.safetensors" in bad.stderr
    assert f"hint: run: cassr download-weights --force --weights-dir {setup.weights} base" in bad.stderr
    assert run("weights", "verify", *common(setup), "act").exit_code == 0

    fixed = run("download-weights", *common(setup), "--force", "base")
    assert fixed.exit_code == 0
    assert run("weights", "verify", *common(setup)).exit_code == 0


def test_truncation_shows_in_list_and_is_refused_at_load_time(setup: Any) -> None:
    assert run("download-weights", *common(setup), "act").exit_code == 0
    target = setup.weights / "act" / "act.pth"
    target.write_bytes(setup.act_data[:5_000])
    assert _statuses(setup)["act"] == "corrupt"
    with pytest.raises(WeightsCorruptError) as info:
        require_installed(setup.weights, "act")
    assert "act.pth: size expected 300000 bytes, got 5000 bytes" in str(info.value)
    verify = run("weights", "verify", *common(setup), "act")
    assert (
        verify.exit_code == 3 and "act/act.pth: size expected 300000 bytes, got 5000 bytes" in verify.stderr
    )
    # a plain download-weights repairs a truncated file (its size no longer matches the stamp)
    assert run("download-weights", *common(setup), "act").exit_code == 0
    assert target.read_bytes() == setup.act_data


def test_verify_with_nothing_installed_exits_3(setup: Any) -> None:
    result = run("weights", "verify", *common(setup))
    assert result.exit_code == 3 and "no installed models" in result.stderr


def test_a_hub_file_with_other_bytes_exits_3_and_installs_nothing(
    tmp_path: Path, server: Any, online: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    real, claimed = helpers.blob(150_000, 7), helpers.blob(150_000, 8)
    server.serve_hub(helpers.REPO, helpers.REVISION, {"w.bin": real})
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    manifest = helpers.write_manifest(
        tmp_path,
        [helpers.model_entry("m", [helpers.file_entry("w.bin", claimed)], hub=[(helpers.REPO, helpers.REVISION)])],
    )
    weights = tmp_path / "w"
    result = run("download-weights", "--manifest", str(manifest), "--weights-dir", str(weights))
    assert result.exit_code == 3
    assert f"sha256 mismatch for m/w.bin: expected {helpers.sha(claimed)}, got {helpers.sha(real)}" in result.stderr
    assert not (weights / "m" / "w.bin").exists() and not (weights / "m" / STAMP_NAME).exists()
    assert run("weights", "verify", "--manifest", str(manifest), "--weights-dir", str(weights)).exit_code == 3
