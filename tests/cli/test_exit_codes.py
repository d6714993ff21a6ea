"""Exit codes exactly as DESIGN §5, through the real error boundary: 0 done (skips included), 1 some failed
or an internal error, 2 usage, 3 environment (weights missing/corrupt, device unavailable — before any
image is read), 130 interrupted (see test_atomicity_cli.py). No traceback unless -vv or CASSR_DEBUG=1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_support import TRACEBACK, cassr, describe, save_rgb, stdout_lines, write_identity_model

import cassr_cli.io.image as image_io
import cassr_cli.runner as runner
import cassr_cli.runner.batch as runner_batch


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save_rgb(tmp_path / "in" / "a.png")


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every image the runner reads (environment errors must come before the first)."""
    seen: list[Path] = []
    real = image_io.read_image

    def recording(path: Path, **kwargs):  # noqa: ANN003, ANN202
        seen.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(image_io, "read_image", recording)
    return seen


def test_exit_0_done_and_0_again_when_everything_is_skipped(tmp_path: Path, model: Path, photo: Path) -> None:
    args = ["upscale", photo, tmp_path / "out", "--activation", model, "--steps", "0"]
    assert cassr(args).exit_code == 0
    again = cassr(args)
    assert again.exit_code == 0 and "1 skipped" in again.stderr


def test_exit_1_when_some_image_failed(tmp_path: Path, model: Path, photo: Path) -> None:
    (photo.parent / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = cassr(["upscale", photo.parent, tmp_path / "out", "--activation", model, "--steps", "0"])
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "a.png")]


# --- 2: usage -------------------------------------------------------------------------------------------

USAGE_CASES = {
    "scale out of range": (["--scale", "9"], "scale"),
    "scale not a number": (["--scale", "big"], "--scale"),
    "unknown format": (["--format", "gif"], "format"),
    "quality zero": (["--quality", "0"], "quality"),
    "tile size not a multiple of 64": (["--tile-size", "100"], "tile_size"),
    "unknown device": (["--device", "tpu"], "device"),
    "unknown option": (["--frobnicate"], "frobnicate"),
    "suffix with a slash": (["--suffix", "a/b"], "suffix"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES), ids=list(USAGE_CASES))
def test_exit_2_bad_options(tmp_path: Path, photo: Path, no_reads: list[Path], case: str) -> None:
    extra, word = USAGE_CASES[case]
    result = cassr(["upscale", photo, tmp_path / "out", "--steps", "0", *extra])
    assert result.exit_code == 2, describe(result)
    assert word in result.stderr
    assert result.stdout == ""
    assert TRACEBACK not in result.stderr
    assert no_reads == [] and not (tmp_path / "out").exists()


def test_exit_2_missing_source(tmp_path: Path, photo: Path, no_reads: list[Path]) -> None:
    missing = tmp_path / "nope.png"
    result = cassr(["upscale", photo, missing, tmp_path / "out", "--steps", "0"])
    assert result.exit_code == 2, describe(result)
    assert f"no such file or folder: {missing}" in result.stderr
    assert no_reads == [] and not (tmp_path / "out").exists()  # nothing ran, not even the good one


def test_exit_2_glob_matching_nothing(tmp_path: Path, photo: Path) -> None:
    result = cassr(["upscale", str(tmp_path / "in" / "*.tiff"), tmp_path / "out", "--steps", "0"])
    assert result.exit_code == 2, describe(result)
    assert "no files match" in result.stderr


def test_exit_2_missing_dest_argument(photo: Path) -> None:
    result = cassr(["upscale", photo])
    assert result.exit_code == 2, describe(result)
    assert TRACEBACK not in result.stderr


def test_exit_2_dest_is_a_file(tmp_path: Path, photo: Path) -> None:
    result = cassr(["upscale", photo, photo, "--steps", "0"])
    assert result.exit_code == 2, describe(result)
    assert "DEST must be a folder" in result.stderr


def test_exit_2_output_would_overwrite_input(photo: Path, model: Path) -> None:
    before = photo.read_bytes()
    result = cassr(["upscale", photo, photo.parent, "--activation", model, "--steps", "0", "--overwrite"])
    assert result.exit_code == 2, describe(result)
    assert "would overwrite the input" in result.stderr
    assert photo.read_bytes() == before


# --- 3: environment -------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["0", "2"])
def test_exit_3_weights_missing_names_the_download_command(
    tmp_path: Path, photo: Path, no_reads: list[Path], steps: str
) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    result = cassr(["upscale", photo, tmp_path / "out", "--weights-dir", empty, "--steps", steps])
    assert result.exit_code == 3, describe(result)
    assert f"run: cassr download-weights --weights-dir {empty} realesrgan-x4plus" in result.stderr
    assert TRACEBACK not in result.stderr
    assert no_reads == [], "an image was read before the weights were checked"
    assert not (tmp_path / "out").exists()


def test_exit_3_truncated_installed_weights(tmp_path: Path, photo: Path, tiny_weights: Path, no_reads: list[Path]) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights / "realesrgan-x4plus", weights / "realesrgan-x4plus")
    (model_file,) = (weights / "realesrgan-x4plus").glob("*.pth")
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    result = cassr(["upscale", photo, tmp_path / "out", "--weights-dir", weights, "--steps", "0"])
    assert result.exit_code == 3, describe(result)
    assert "integrity check" in result.stderr
    assert f"cassr download-weights --force --weights-dir {weights} realesrgan-x4plus" in result.stderr
    assert no_reads == []


def test_exit_3_truncated_model_file_given_by_path(tmp_path: Path, photo: Path, model: Path, no_reads: list[Path]) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    result = cassr(["upscale", photo, tmp_path / "out", "--activation", broken, "--steps", "0"])
    assert result.exit_code == 3, describe(result)
    assert f"cannot load activation model {broken}" in result.stderr
    assert TRACEBACK not in result.stderr
    assert no_reads == []


def test_exit_3_cuda_requested_without_cuda(tmp_path: Path, photo: Path, model: Path, no_reads: list[Path]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cassr(["upscale", photo, tmp_path / "out", "--activation", model, "--steps", "0", "--device", "cuda"])
    assert result.exit_code == 3, describe(result)
    assert "CUDA is not available" in result.stderr
    assert no_reads == [] and not (tmp_path / "out").exists()


# --- internal errors: one line, traceback only on request -------------------------------------------------


def boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("extra", "env", "traceback"),
    [([], None, False), (["-v"], None, False), (["-vv"], None, True), ([], {"CASSR_DEBUG": "1"}, True)],
    ids=["plain", "-v", "-vv", "CASSR_DEBUG"],
)
def test_internal_error_traceback_only_on_request(
    tmp_path: Path,
    photo: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    env: dict[str, str] | None,
    traceback: bool,
) -> None:
    monkeypatch.setattr(runner, "plan_batch", boom)
    result = cassr(["upscale", photo, tmp_path / "out", "--steps", "0", *extra], env=env)
    assert result.exit_code == 1, describe(result)
    assert "internal error: RuntimeError: boom" in result.stderr
    assert (TRACEBACK in result.stderr) is traceback, result.stderr
    if not traceback:
        assert "-vv or CASSR_DEBUG=1" in result.stderr


def test_internal_error_in_one_image_fails_that_image_only(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_factory = runner_batch.default_pipeline_factory

    def factory(config):  # noqa: ANN001, ANN202
        pipeline = real_factory(config)
        real_call = type(pipeline).__call__

        class Flaky(type(pipeline)):  # type: ignore[misc]
            def __call__(self, image, **kwargs):  # noqa: ANN001, ANN003, ANN204
                if image.shape[-1] == 20:  # the 20-pixel-wide input
                    raise ValueError("kaboom")
                return real_call(self, image, **kwargs)

        pipeline.__class__ = Flaky
        return pipeline

    monkeypatch.setattr(runner_batch, "default_pipeline_factory", factory)
    save_rgb(tmp_path / "in" / "a.png", w=16)
    save_rgb(tmp_path / "in" / "b.png", w=20)
    save_rgb(tmp_path / "in" / "c.png", w=16)
    result = cassr(["upscale", tmp_path / "in", tmp_path / "out", "--activation", model, "--steps", "0"])
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "c.png")]
    assert "internal error: ValueError: kaboom" in result.stderr
    assert TRACEBACK not in result.stderr


def test_a_broken_gpu_stops_the_batch_with_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-OOM CUDA error (illegal access, device-side assert) leaves the context unusable: the batch
    stops with exit 3 instead of failing every remaining image the same way."""
    import torch

    from cassr_cli.engine.pipeline import CassrPipeline

    model = write_identity_model(tmp_path / "id.pth")
    for name in ("a", "b", "c"):
        save_rgb(tmp_path / "in" / f"{name}.png")
    calls = []

    def broken(self, image, **kwargs):
        calls.append(1)
        error = getattr(torch, "AcceleratorError", RuntimeError)  # torch < 2.8: a RuntimeError with this text
        raise error("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(CassrPipeline, "__call__", broken)
    result = cassr(["upscale", tmp_path / "in", tmp_path / "out", "--activation", model, "--steps", "0"])
    assert result.exit_code == 3, describe(result)
    assert "GPU failed" in result.stderr and len(calls) == 1
