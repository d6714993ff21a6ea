"""Shared test setup: offline, CPU, deterministic, isolated from the user's config and caches."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_TESTDATA = SHARED / "testdata"
SHARED_WEIGHTS = SHARED / "weights"

# Set before anything imports huggingface_hub (hub look-ups would otherwise hang before failing).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the calling test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not available: {Path(*parts)}")
    return path


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No user config, no real weights dir, no colour codes, no stray CASSR_* settings."""
    for key in list(os.environ):
        if key.startswith("CASSR_"):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Any connection to a non-loopback address fails the test (tests may run local servers)."""
    if request.node.get_closest_marker("network_ok"):
        return
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and self.family != socket.AF_UNIX:
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = os.environ.get("CASSR_RUN_SLOW", "") not in ("", "0")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: set CASSR_RUN_SLOW=1 to run it"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny weights directory (real layout, random models), written once per session."""
    from cassr_cli.testing.tiny_weights import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``), restored
    afterwards. Tiny models gain nothing from intra-op threads, and on a shared 2-core machine threads
    waiting for a busy core cost a lot: the adapter's loss test took 148 s with 2 threads and 10.6 s with 1
    while another test run was going."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
