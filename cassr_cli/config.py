"""Configuration: one frozen dataclass, resolved once from flags > ``CASSR_*`` env > TOML file > defaults.

Every option of ``cassr upscale`` that changes *what* is computed or written lives in
:class:`UpscaleConfig`. Options that only change how the run talks to the user (``--json``, ``-q``,
``-v``) stay on the command line. :func:`resolve_config` merges the layers explicitly and records where
each value came from, which ``cassr config show`` prints.

The TOML file is flat: ``scale = 4``, ``tile_size = 512`` … (the same names as the dataclass fields, which
are the long option names with ``_`` for ``-``). Unknown keys are errors. The environment variable of a
key is ``CASSR_`` + the upper-case key, e.g. ``CASSR_TILE_SIZE=768``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cassr_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

OutputFormat = Literal["same", "png", "jpg", "webp", "tiff"]
GuidanceMode = Literal["auto", "per-step", "cached"]
ColorFix = Literal["wavelet", "adain", "none"]
DTypeName = Literal["auto", "fp16", "bf16", "fp32"]
AttentionBackend = Literal["sdpa", "xformers"]

OUTPUT_FORMATS: tuple[str, ...] = ("same", "png", "jpg", "webp", "tiff")
GUIDANCE_MODES: tuple[str, ...] = ("auto", "per-step", "cached")
COLOR_FIXES: tuple[str, ...] = ("wavelet", "adain", "none")
DTYPES: tuple[str, ...] = ("auto", "fp16", "bf16", "fp32")
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "xformers")
CANVASES: tuple[str, ...] = ("auto", "device", "host")
SCHEDULERS: tuple[str, ...] = ("dpmpp-2m", "ddim", "euler", "euler-a", "unipc")

ENV_PREFIX = "CASSR_"
CONFIG_ENV_VAR = "CASSR_CONFIG"


def _opt(default: Any, help: str, *, panel: str, **extra: Any) -> Any:  # noqa: A002 - "help" mirrors Typer
    """A config field and what the CLI needs to offer it as an option: its help text, its help panel
    (``model``, ``diffusion``, ``engine``, ``output``, ``scale``), optional ``choices`` and an optional one-letter alias
    ``short`` (options are ``--long-name``, booleans ``--name/--no-name``). Every command that takes upscale options
    generates them from these fields (``cli/config_options.py``)."""
    return field(default=default, metadata={"help": help, "panel": panel, **extra})


@dataclass(frozen=True)
class UpscaleConfig:
    """Everything that decides what ``cassr upscale`` computes and writes. Immutable; build it with
    :func:`resolve_config` (CLI) or directly (Python API); :meth:`validate` runs on construction."""

    # --- scale and models ---------------------------------------------------------------------------
    scale: float = _opt(4.0, "Output size relative to the input (1–8, fractions allowed).", panel="model", short="-s")
    activation: str = _opt(
        "realesrgan-x4plus",
        "Stage-1 activation model: a name in the weights directory, a spandrel .pth/.safetensors file, or an "
        "SCEdit tuner (.safetensors from cassr train; it samples x_ref with the base model); bicubic = no model "
        "(x_ref is the bicubic-upsampled input, an ablation).",
        panel="model",
    )
    activation_steps: int = _opt(
        5, "Sampling steps of an SCEdit activation (UNet passes per tile, from pure noise); unused by spandrel models.",
        panel="model",
    )
    base_model: str = _opt(
        "sd21-base", "Stage-2 base model: a name in the weights directory or a diffusers folder.",
        panel="model",
    )
    adapter: str | None = _opt(None, "Trained multi-attention adapter (.safetensors) for stage 2.", panel="model")
    weights_dir: str | None = _opt(
        None, "Where downloaded weights live (default: the user cache directory).",
        panel="model",
    )
    # --- stage 2: diffusion -------------------------------------------------------------------------
    steps: int = _opt(5, "Denoising steps actually run (UNet passes per tile); 0 runs stage 1 only (fast, GAN quality).", panel="diffusion")
    strength: float = _opt(
        0.5, "How far to noise the reference before denoising (0 < s ≤ 1): the first step is at t ≈ s·1000 (1 = t 999, as from noise).",
        panel="diffusion",
    )
    scheduler: str = _opt("dpmpp-2m", "Sampler.", choices=SCHEDULERS, panel="diffusion")
    guidance_mode: str = _opt(
        "auto",
        "Multi-attention guidance: per-step, cached, or auto (an adapter's training mode, else cached).",
        choices=GUIDANCE_MODES,
        panel="diffusion",
    )
    guidance_timestep: int = _opt(
        200, "Timestep t_g of the cached guidance pass (0–999).",
        panel="diffusion",
    )
    guidance_refresh: int = _opt(
        1,
        "Per-step guidance: recompute the guidance K/V every N steps and reuse them in between (1 = every step).",
        panel="diffusion",
    )
    lr_weight: float = _opt(1.0, "Attention weight of the low-resolution input stream (0 disables it).", panel="diffusion")
    ref_weight: float = _opt(1.0, "Attention weight of the activated reference stream (0 disables it).", panel="diffusion")
    prompt: str = _opt("", "Text prompt (CasSR is guided by the image; empty by default).", panel="diffusion")
    negative_prompt: str = _opt("", "Negative prompt (used when guidance_scale > 1).", panel="diffusion")
    guidance_scale: float = _opt(1.0, "Classifier-free guidance scale; 1 turns CFG off.", panel="diffusion")
    color_fix: str = _opt("wavelet", "Colour correction against the reference.", choices=COLOR_FIXES, panel="diffusion")
    seed: int = _opt(0, "Base seed; each image's generator derives from (seed, relative path).", panel="model")
    # --- engine: tiling, precision, device ----------------------------------------------------------
    tile_size: int = _opt(512, "Diffusion tile in output pixels (multiple of 64).", panel="engine")
    tile_overlap: int = _opt(128, "Overlap of diffusion tiles in output pixels (multiple of 8; at most half the tile is used).", panel="engine")
    tile_batch: int = _opt(
        0,
        "Diffusion tiles per UNet call; 0 = auto (as many as fit half the free GPU memory, 4 off CUDA). More is "
        "faster and uses more memory.",
        panel="engine",
    )
    tile_shift: bool = _opt(
        False,
        "Diffusion tiles without overlap on a grid shifted every step, instead of overlapping tiles (fewer tiles).",
        panel="engine",
    )
    vae_tile_size: int = _opt(512, "VAE encode/decode tile in output pixels (multiple of 64).", panel="engine")
    vae_tile_batch: int = _opt(0, "VAE tiles per encode/decode call; 0 = auto (from free GPU memory, 2 off CUDA).", panel="engine")
    activation_tile_size: int = _opt(256, "Stage-1 tile in input pixels (multiple of 8).", panel="engine")
    activation_tile_overlap: int = _opt(32, "Stage-1 tile overlap in input pixels (multiple of 8; at most half the tile is used).", panel="engine")
    activation_tile_batch: int = _opt(0, "Stage-1 tiles per model call; 0 = auto (from free GPU memory, 4 off CUDA).", panel="engine")
    device: str = _opt(
        "auto",
        "cuda, cuda:N, cpu or auto (CUDA when available), or a list such as cuda:0,cuda:1: one image spreads "
        "its diffusion tiles over the devices, a batch runs one pipeline per device.",
        panel="engine",
    )
    dtype: str = _opt("auto", "Compute precision; auto = fp16 on CUDA, fp32 on CPU.", choices=DTYPES, panel="engine")
    attention: str = _opt("sdpa", "Attention kernel.", choices=ATTENTION_BACKENDS, panel="engine")
    compile: bool = _opt(
        False,
        "torch.compile the UNet, VAE and activation model (static tile shapes, CUDA graphs where they apply, "
        "channels-last); the first image of each size compiles, later ones run faster.",
        panel="engine",
    )
    canvas: str = _opt(
        "auto",
        "Where image canvases live: device (blend, colour fix, resize on the GPU), host (GPU memory bounded by "
        "the tile), or auto (device when the image fits a quarter of the free GPU memory).",
        choices=CANVASES,
        panel="engine",
    )
    # --- inputs and outputs -------------------------------------------------------------------------
    recursive: bool = _opt(False, "Descend into folders and mirror their tree under DEST.", panel="output", short="-r")
    suffix: str = _opt("", "Text added to each output file name before the extension.", panel="output")
    format: str = _opt("same", "Output format.", choices=OUTPUT_FORMATS, panel="output", short="-f")
    quality: int = _opt(95, "JPEG/WebP quality (1–100).", panel="output")
    writers: int = _opt(
        0, "Threads encoding and writing outputs (0 = one per CPU core, at most 4); each holds one image.", panel="output"
    )
    overwrite: bool = _opt(False, "Replace existing outputs (default: skip them, so batches resume).", panel="output")
    fail_fast: bool = _opt(False, "Stop at the first failed image.", panel="output")
    max_pixels: int = _opt(
        200_000_000, "Refuse inputs with more pixels than this (decompression-bomb guard).",
        panel="output",
    )
    max_host_memory_gb: float = _opt(
        0.0, "Host memory one image may use, in GiB; 0 = 90% of what is available.",
        panel="output",
    )
    # --- scale-out ------------------------------------------------------------------------------------
    shard: str | None = _opt(
        None,
        "Do only share K of N of the planned outputs (K/N, 1-based; balanced by pixel count), e.g. one "
        "task of a job array.",
        panel="scale",
    )
    ray: str | None = _opt(
        None, "Run on a Ray cluster: local (start one here), auto (join the running one) or ray://host:port.",
        panel="scale",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every value against its allowed range. Raises :class:`ConfigError` naming the key."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                _bad(f.name, value, f"one of {', '.join(choices)}")
        if not (math.isfinite(self.scale) and 1.0 <= self.scale <= 8.0):
            _bad("scale", self.scale, "a number from 1 to 8")
        if not (0 <= self.steps <= 500):
            _bad("steps", self.steps, "0 to 500")
        if not (1 <= self.activation_steps <= 500):
            _bad("activation_steps", self.activation_steps, "1 to 500")
        if not (0.0 < self.strength <= 1.0):
            _bad("strength", self.strength, "greater than 0 and at most 1")
        if not (0 <= self.guidance_timestep <= 999):
            _bad("guidance_timestep", self.guidance_timestep, "0 to 999")
        for key in ("lr_weight", "ref_weight"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                _bad(key, getattr(self, key), "a number ≥ 0")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1.0):
            _bad("guidance_scale", self.guidance_scale, "a number ≥ 1 (1 = off)")
        _check_tile("tile_size", self.tile_size, multiple=64, minimum=64)
        _check_tile("vae_tile_size", self.vae_tile_size, multiple=64, minimum=64)
        _check_tile("activation_tile_size", self.activation_tile_size, multiple=8, minimum=32)
        _check_overlap("tile_overlap", self.tile_overlap)
        _check_overlap("activation_tile_overlap", self.activation_tile_overlap)
        for key in ("tile_batch", "activation_tile_batch", "vae_tile_batch"):
            if not (0 <= getattr(self, key) <= 64):
                _bad(key, getattr(self, key), "0 (auto) to 64")
        if not (1 <= self.guidance_refresh <= 500):
            _bad("guidance_refresh", self.guidance_refresh, "1 to 500")
        if not (0 <= self.writers <= 64):
            _bad("writers", self.writers, "0 (auto) to 64")
        if not (1 <= self.quality <= 100):
            _bad("quality", self.quality, "1 to 100")
        if self.max_pixels < 1:
            _bad("max_pixels", self.max_pixels, "a positive number of pixels")
        if not (math.isfinite(self.max_host_memory_gb) and self.max_host_memory_gb >= 0):
            _bad("max_host_memory_gb", self.max_host_memory_gb, "a number of GiB ≥ 0")
        if any(sep in self.suffix for sep in ("/", "\\")) or "\0" in self.suffix:
            _bad("suffix", self.suffix, "text without path separators")
        if "," in self.device:
            _check_device_list(self.device)
        elif self.device != "auto" and not _is_device_name(self.device):
            _bad("device", self.device, "auto, cpu, cuda, cuda:N, mps, or a list such as cuda:0,cuda:1")
        if self.shard is not None and parse_shard(self.shard) is None:
            _bad("shard", self.shard, "K/N with 1 ≤ K ≤ N, e.g. 2/8")
        if self.ray is not None and not (self.ray in ("local", "auto") or self.ray.startswith("ray://")):
            _bad("ray", self.ray, "local, auto or ray://host:port")

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices of ``device``: one name, or the entries of a list (``cuda:0,cuda:1`` → two)."""
        return parse_devices(self.device)

    def replace(self, **changes: Any) -> UpscaleConfig:
        """A copy with some values changed (validated again)."""
        return dataclasses.replace(self, **changes)


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"K/N"`` → ``(K, N)`` (1-based, ``1 ≤ K ≤ N``), or None when ``text`` is not such a pair."""
    index, sep, count = text.strip().partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()):
        return None
    k, n = int(index), int(count)
    return (k, n) if 1 <= k <= n else None


def parse_devices(text: str) -> tuple[str, ...]:
    """``"cuda:0, cuda:1"`` → ``("cuda:0", "cuda:1")``; a single name → a 1-tuple. Entries are not checked
    here (:meth:`UpscaleConfig.validate` does)."""
    return tuple(part.strip() for part in text.split(","))


def _check_device_list(text: str) -> None:
    """A device list holds two or more entries, each ``cpu`` or ``cuda:N``, all of one kind, no GPU twice
    (``cpu`` may repeat: several model copies on the CPU, each on its own thread)."""
    usage = "a list of cuda:N (each GPU once) or of cpu, e.g. cuda:0,cuda:1"
    entries = parse_devices(text)
    for entry in entries:
        if not entry:
            _bad("device", text, f"{usage} (an entry is empty)")
        if not (entry == "cpu" or (entry.startswith("cuda:") and _is_device_name(entry))):
            _bad("device", text, f"{usage} ({entry!r} cannot be in a list)")
    kinds = {entry.partition(":")[0] for entry in entries}
    if len(kinds) > 1:
        _bad("device", text, f"{usage} (cpu and cuda cannot be mixed)")
    seen = set()
    for entry in entries:
        key = entry if entry == "cpu" else f"cuda:{int(entry.partition(':')[2])}"
        if entry != "cpu" and key in seen:
            _bad("device", text, f"{usage} ({key} is listed twice)")
        seen.add(key)


def _is_device_name(name: str) -> bool:
    if name in ("cpu", "cuda", "mps"):
        return True
    head, _, index = name.partition(":")
    return head == "cuda" and index.isdigit()


def _bad(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"invalid {key} = {value!r}: expected {allowed}")


def _check_tile(key: str, value: int, *, multiple: int, minimum: int) -> None:
    if value < minimum or value % multiple:
        _bad(key, value, f"a multiple of {multiple}, at least {minimum}")


def _check_overlap(key: str, value: int) -> None:
    # Overlaps above half the tile are allowed here and capped by the engine, so that changing only
    # the tile size never turns the default overlap into an error.
    if value < 0 or value % 8:
        _bad(key, value, "a multiple of 8, at least 0 (capped at half the tile)")


# --- resolution ---------------------------------------------------------------------------------------

FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(UpscaleConfig)}


@dataclass(frozen=True)
class ResolvedConfig:
    """The effective configuration and, per key, where its value came from
    (``"flag"``, ``"env CASSR_X"``, ``"config PATH"`` or ``"default"``)."""

    config: UpscaleConfig
    sources: Mapping[str, str]
    config_file: Path | None


def user_config_path() -> Path:
    """The per-user config file (``~/.config/cassr/config.toml`` on Linux; platform equivalents)."""
    import platformdirs

    return platformdirs.user_config_path("cassr") / "config.toml"


def resolve_config(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> ResolvedConfig:
    """Merge flags > ``CASSR_*`` environment > TOML file > defaults into one validated config.

    Args:
        flags: values given on the command line; ``None`` means "not given".
        env: the environment (default ``os.environ``).
        config_file: ``--config`` if given; otherwise ``$CASSR_CONFIG``, then :func:`user_config_path`
            if it exists.

    Raises:
        ConfigError: unknown keys, wrong types, out-of-range values, or an unreadable file.
    """
    env = os.environ if env is None else env
    unknown = set(flags) - set(FIELDS)
    if unknown:  # a programming error in the CLI layer, but say it clearly
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")

    path = _pick_config_file(config_file, env)
    file_values = load_config_file(path) if path is not None else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, f in FIELDS.items():
        env_key = ENV_PREFIX + name.upper()
        if flags.get(name) is not None:
            values[name], sources[name] = flags[name], "flag"
        elif env.get(env_key, "") != "":
            values[name] = _parse_env(name, env[env_key], f)
            sources[name] = f"env {env_key}"
        elif name in file_values:
            values[name], sources[name] = file_values[name], f"config {path}"
        else:
            sources[name] = "default"
    try:
        config = UpscaleConfig(**values)
    except ConfigError as err:
        key = str(err).split(" = ", 1)[0].removeprefix("invalid ")
        origin = sources.get(key)
        raise ConfigError(f"{err} (from {origin})" if origin else str(err), hint=err.hint) from None
    return ResolvedConfig(config=config, sources=sources, config_file=path)


def _pick_config_file(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit
    if env.get(CONFIG_ENV_VAR):
        path = Path(env[CONFIG_ENV_VAR])
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (from {CONFIG_ENV_VAR})")
        return path
    default = user_config_path()
    return default if default.is_file() else None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a flat TOML config; unknown keys and wrong types are errors naming the file and key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see `cassr config show` for all keys"
            raise ConfigError(f"unknown key {key!r} in config file {path}", hint=hint)
        out[key] = _coerce(key, value, FIELDS[key], origin=f"config file {path}")
    return out


def _field_type(f: dataclasses.Field[Any]) -> str:
    return str(f.type).replace(" ", "")


def _coerce(key: str, value: Any, f: dataclasses.Field[Any], *, origin: str) -> Any:
    kind = _field_type(f)
    ok = (
        (kind == "bool" and isinstance(value, bool))
        or (kind == "int" and isinstance(value, int) and not isinstance(value, bool))
        or (kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind in ("str", "str|None") and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{key} in {origin} must be of type {kind}, got {value!r}")
    return float(value) if kind == "float" else value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_env(key: str, raw: str, f: dataclasses.Field[Any]) -> Any:
    kind = _field_type(f)
    env_key = ENV_PREFIX + key.upper()
    text = raw.strip()
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"invalid {env_key}={raw!r}: expected {kind}") from None
    return raw


def describe(resolved: ResolvedConfig) -> list[tuple[str, str, str]]:
    """Rows ``(key, value, source)`` for ``cassr config show``, in declaration order."""
    rows = []
    for name in FIELDS:
        value = getattr(resolved.config, name)
        rows.append((name, _format_value(value), resolved.sources.get(name, "default")))
    return rows


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)


def settings_to_args(settings: Mapping[str, Any]) -> list[str]:
    """Command-line arguments for ``{field: value}`` (``--tile-size 768``, ``--no-recursive``; ``None``
    values are left out); the inverse of ``cli.config_options.parse_config_flags``."""
    out: list[str] = []
    for name, value in settings.items():
        long = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(long if value else f"--no-{long[2:]}")
        elif value is not None:
            out += [long, str(value)]
    return out


def to_toml(config: UpscaleConfig) -> str:
    """The config as a flat TOML document (round-trips through :func:`load_config_file`)."""
    lines = []
    for name in FIELDS:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"
