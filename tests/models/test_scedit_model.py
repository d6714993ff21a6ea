"""The SCEdit tuner on diffusers UNets: zero-init equivalence, skip mapping, SD 1.x/2.x shapes, files."""

from __future__ import annotations

import json

import pytest
import torch

from cassr_cli.errors import ModelLoadError
from cassr_cli.models.scedit import SCEditTuner, SkipLayout, TunedUNet
from cassr_cli.testing.architectures import SD21_BASE_UNET_CONFIG
from cassr_cli.testing.tiny_weights import TEXT_HIDDEN, build_tiny_unet

SD15_UNET_CONFIG = {  # runwayml/stable-diffusion-v1-5 unet/config.json, the fields that differ from 2.1-base
    **SD21_BASE_UNET_CONFIG,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "use_linear_projection": False,
}
SD_SKIPS = (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)
SMALL = {"tuner_ratio": 0.5, "hint_channels": 16, "stem_widths": (8, 16, 16)}


def _unet(levels: int):
    torch.manual_seed(0)
    return build_tiny_unet(levels=levels).eval()


def _perturb(module: torch.nn.Module, seed: int = 1, size: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * size)


def _inputs(batch: int, latent: int, factor: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, latent, latent, generator=g),
        torch.randn(batch, 77, TEXT_HIDDEN, generator=g),
        torch.rand(batch, 3, latent * factor, latent * factor, generator=g),
    )


@pytest.mark.parametrize(("levels", "factor"), [(4, 8), (3, 4)])
def test_untrained_tuner_leaves_the_unet_exactly_unchanged(levels, factor):
    unet = _unet(levels)
    x, emb, cond = _inputs(2, 16, factor)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=emb).sample
        tuned = TunedUNet(unet, SCEditTuner.for_unet(unet, pixel_factor=factor, **SMALL))
        assert torch.equal(tuned(x, t, emb, cond), plain)
        _perturb(tuned.tuner)  # a trained-looking tuner does change the prediction ...
        changed = tuned(x, t, emb, cond)
        assert (changed - plain).abs().max() > 1e-3
        # ... but only inside its own call: the UNet called directly (stage 2 shares it) is untouched
        assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, plain)
        tuned.close()
        assert all(not block._forward_pre_hooks for block in unet.up_blocks)


def _record_skips(unet, x, t, emb):
    """The skip features ``down_block_res_samples`` of a plain forward, collected with forward hooks on
    ``conv_in`` and the down blocks (independently of the tuner's own hooks)."""
    skips: list[torch.Tensor] = []
    handles = [unet.conv_in.register_forward_hook(lambda m, a, out: skips.append(out))]
    for block in unet.down_blocks:
        handles.append(block.register_forward_hook(lambda m, a, out: skips.extend(out[1])))
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=emb)
    for h in handles:
        h.remove()
    return skips


@pytest.mark.parametrize(("levels", "factor"), [(4, 8), (3, 4)])
def test_hooks_equal_controlnet_style_residuals_computed_from_the_plain_skips(levels, factor):
    """The tuner changes skip i to ``s_i + c_i + T_i(s_i + c_i)``. Computed outside the UNet from its plain
    skips and passed as diffusers' ControlNet residuals, that must give what the hooks give: the hooks
    reach the right skip, in the right order, and nothing else."""
    unet = _unet(levels)
    tuner = SCEditTuner.for_unet(unet, pixel_factor=factor, **SMALL)
    _perturb(tuner, size=0.1)
    x, emb, cond = _inputs(2, 8, factor, seed=3)
    t = torch.tensor([400, 400])
    skips = _record_skips(unet, x, t, emb)
    with torch.no_grad():
        features = tuner.encode(cond)
        residuals = tuple(f + tuner.tuners[i](s + f) for i, (s, f) in enumerate(zip(skips, features, strict=True)))
        expected = unet(
            x, t, encoder_hidden_states=emb,
            down_block_additional_residuals=residuals, mid_block_additional_residual=torch.zeros(()),
        ).sample
        tuned = TunedUNet(unet, tuner)
        got = tuned(x, t, emb, cond)
        tuned.close()
    assert len(skips) == len(tuner.layout.channels)
    assert [s.shape[1] for s in skips] == list(tuner.layout.channels)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (got - unet(x, t, encoder_hidden_states=emb).sample).abs().max() > 1e-3


@pytest.mark.parametrize("config", [SD15_UNET_CONFIG, SD21_BASE_UNET_CONFIG], ids=["sd15", "sd21"])
def test_sd_layouts_give_twelve_skips_and_run_on_the_meta_device(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    layout = SkipLayout.of(unet)
    assert layout.channels == SD_SKIPS
    assert layout.downsampled == (False, False, False, True, False, False, True, False, False, True, False, False)
    assert layout.up_groups == ((9, 10, 11), (6, 7, 8), (3, 4, 5), (0, 1, 2))
    with torch.device("meta"):
        tuner = SCEditTuner(layout)
    # The SC-Tuners alone are the 19.68 M parameters SCEdit reports for SD; the condition encoder adds 26.3 M.
    assert sum(p.numel() for p in tuner.tuners.parameters()) == 19_680_000
    assert tuner.parameter_count() == 46_027_600
    seen: dict[int, tuple[int, ...]] = {}
    original = tuner.tune

    def spy(index, skip, feature):
        seen[index] = tuple(skip.shape)
        return original(index, skip, feature)

    tuner.tune = spy  # type: ignore[method-assign]
    tuned = TunedUNet(unet, tuner)
    hidden = config["cross_attention_dim"]
    with torch.device("meta"):
        out = tuned(torch.empty(2, 4, 64, 64), torch.tensor([1, 2]), torch.empty(2, 77, hidden), torch.empty(2, 3, 512, 512))
    assert tuple(out.shape) == (2, 4, 64, 64)
    sizes = [64] * 3 + [32] * 3 + [16] * 3 + [8] * 3
    assert seen == {i: (2, c, s, s) for i, (c, s) in enumerate(zip(SD_SKIPS, sizes, strict=True))}


def test_condition_of_the_wrong_size_or_batch_is_refused():
    unet = _unet(4)
    tuned = TunedUNet(unet, SCEditTuner.for_unet(unet, pixel_factor=8, **SMALL))
    x, emb, cond = _inputs(2, 8, 8)
    with pytest.raises(ValueError, match="condition images for"):
        tuned(x, 1, emb, cond[:1])
    with pytest.raises(ValueError, match="8× the latent size"):
        tuned(x, 1, emb, cond[..., :32, :32])
    tuned.close()


def test_file_round_trip_metadata_and_mismatched_base(tmp_path):
    unet = _unet(4)
    tuner = SCEditTuner.for_unet(unet, pixel_factor=8, base_model="tiny-sd21", **SMALL)
    _perturb(tuner)
    path = tmp_path / "scedit.safetensors"
    tuner.save(path, extra={"training_config": "seed = 0\n", "trained_steps": "7"})
    loaded, meta = SCEditTuner.load(path)
    assert meta["kind"] == "scedit" and meta["base_model"] == "tiny-sd21" and meta["trained_steps"] == "7"
    assert meta["training_config"] == "seed = 0\n"
    assert json.loads(meta["dimensions"]) == {"pixel_factor": 8, "tuner_ratio": 0.5, "hint_channels": 16, "stem_widths": [8, 16, 16]}
    assert loaded.layout == tuner.layout and loaded.dims == tuner.dims
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tuner.state_dict().values(), strict=True))
    loaded.check_matches(unet, 8)
    with pytest.raises(ModelLoadError, match="made for 'tiny-sd21' and does not fit"):
        loaded.check_matches(_unet(3), 4)
    with pytest.raises(ModelLoadError, match="does not fit"):
        loaded.check_matches(unet, 4)  # same UNet, another VAE factor


def test_other_safetensors_are_not_taken_for_a_tuner(tmp_path):
    from safetensors.torch import save_file

    from cassr_cli.models.adapter import MultiAttentionAdapter

    adapter = tmp_path / "adapter.safetensors"
    MultiAttentionAdapter.for_unet(_unet(4), rank=2).save(adapter)
    with pytest.raises(ModelLoadError, match="not a cassr SCEdit tuner"):
        SCEditTuner.load(adapter)
    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelLoadError, match="not a cassr SCEdit tuner"):
        SCEditTuner.load(plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read"):
        SCEditTuner.load(broken)
