"""Training data: discovery, crops, pairs, determinism (seed, sample number, workers), step sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from training_support import photo

from cassr_cli.errors import ConfigError
from cassr_cli.training.config import DataConfig, load_train_config
from cassr_cli.training.data import (
    CropDataset,
    StepSampler,
    TrainingImage,
    degrade_batch,
    find_training_images,
    generator_for,
    make_loader,
    sample_number,
)


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hr"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(photo(80, 96, 0)).save(root / "a.png")
    Image.fromarray(photo(72, 100, 1)).save(root / "sub" / "b.JPG", quality=95)
    Image.fromarray(photo(90, 70, 2)).save(root / "sub" / "deeper" / "c.tiff")
    Image.fromarray(photo(40, 50, 3)).save(root / "small.webp", lossless=True)  # smaller than a crop
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"junk")
    return root


def _config(**changes) -> DataConfig:
    values = {"crop_size": 64, "scale": 4, "num_workers": 0, **changes}
    return DataConfig(**values)


def test_finds_images_recursively_in_any_format(photo_dir):
    images = find_training_images(_config(hr_dirs=(str(photo_dir),)))
    names = sorted(i.hr.name for i in images)
    assert names == ["a.png", "b.JPG", "c.tiff", "small.webp"]
    assert all(i.lr is None for i in images)
    with pytest.raises(ConfigError, match="no training images"):
        find_training_images(_config())


def test_crops_have_the_training_size_and_range(photo_dir):
    dataset = CropDataset(find_training_images(_config(hr_dirs=(str(photo_dir),))), _config(), seed=0)
    for n in range(8):  # two passes over the four images, the small one padded
        sample = dataset[n]
        assert sample["hr"].shape == (3, 64, 64) and sample["hr"].dtype == torch.float32
        assert float(sample["hr"].min()) >= 0.0 and float(sample["hr"].max()) <= 1.0
        assert sample["lr"].shape == (3, 16, 16) and not bool(sample["paired"])


def test_each_pass_visits_every_image_once(photo_dir):
    dataset = CropDataset(find_training_images(_config(hr_dirs=(str(photo_dir),))), _config(), seed=3)
    for epoch in range(3):
        assert sorted(dataset.image_index(epoch * 4 + i) for i in range(4)) == [0, 1, 2, 3]
    assert [dataset.image_index(i) for i in range(4)] != [dataset.image_index(4 + i) for i in range(4)]


def test_samples_depend_only_on_seed_and_sample_number(photo_dir):
    images = find_training_images(_config(hr_dirs=(str(photo_dir),)))
    first = CropDataset(images, _config(), seed=7)
    again = CropDataset(images, _config(), seed=7)
    other = CropDataset(images, _config(), seed=8)
    forward = [first[n]["hr"] for n in range(6)]
    backward = [again[n]["hr"] for n in reversed(range(6))][::-1]  # access order must not matter
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert not all(torch.equal(a, other[n]["hr"]) for n, a in enumerate(forward))


def test_flips_and_rotations_follow_the_config(photo_dir):
    images = [TrainingImage(photo_dir / "a.png")]
    plain = CropDataset(images, _config(hflip=False, rot90=False), seed=0)
    flipped = CropDataset(images, _config(hflip=True, rot90=True), seed=0)
    changed = 0
    for n in range(8):  # same crop window, possibly flipped/rotated
        a, b = plain[n]["hr"], flipped[n]["hr"]
        variants = [a.rot90(k, (-2, -1)) for k in range(4)] + [a.flip(-1).rot90(k, (-2, -1)) for k in range(4)]
        assert any(torch.equal(b, v) for v in variants)
        changed += not torch.equal(a, b)
    assert changed >= 4


def test_pairs_match_by_stem_and_crop_aligned(tmp_path):
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for i in range(2):
        hr = photo(96, 128, 10 + i)
        lr = F.avg_pool2d(torch.from_numpy(hr).permute(2, 0, 1)[None].float(), 4)[0]  # exact 4× area down
        Image.fromarray(hr).save(hr_dir / f"img_{i}_HR.png")
        Image.fromarray(lr.permute(1, 2, 0).round().byte().numpy()).save(lr_dir / f"img_{i}_LR.png")
    Image.fromarray(photo(96, 128, 99)).save(hr_dir / "unmatched_HR.png")
    config = _config(
        paired_hr_dir=str(hr_dir), paired_lr_dir=str(lr_dir), paired_hr_suffix="_HR", paired_lr_suffix="_LR", rot90=True
    )
    images = find_training_images(config)
    assert [(i.hr.name, i.lr.name) for i in images] == [("img_0_HR.png", "img_0_LR.png"), ("img_1_HR.png", "img_1_LR.png")]
    dataset = CropDataset(images, config, seed=0)
    for n in range(6):
        sample = dataset[n]
        assert bool(sample["paired"]) and sample["lr"].shape == (3, 16, 16)
        # the LR crop is the area-downscaled HR crop (same window, same flips/rotation), up to 8-bit rounding
        assert (F.avg_pool2d(sample["hr"][None], 4)[0] - sample["lr"]).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ConfigError, match="no LR/HR pairs matched"):
        find_training_images(_config(paired_hr_dir=str(hr_dir), paired_lr_dir=str(lr_dir)))


def test_step_sampler_gives_disjoint_samples_and_resumes_in_place():
    kwargs = {"accumulation": 2, "batch": 3, "max_steps": 4}
    ranks = [list(StepSampler(start_step=0, world=2, rank=r, **kwargs)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(4 * 2 * 2 * 3))
    resumed = list(StepSampler(start_step=2, world=2, rank=1, **kwargs))
    assert resumed == ranks[1][len(ranks[1]) - len(resumed) :] and len(resumed) == 2 * 2 * 3
    assert ranks[1][:3] == [sample_number(0, 0, 1, p, accumulation=2, world=2, batch=3) for p in range(3)]


def test_loader_batches_do_not_depend_on_worker_count(photo_dir):
    images = find_training_images(_config(hr_dirs=(str(photo_dir),)))
    dataset = CropDataset(images, _config(), seed=1)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = StepSampler(start_step=1, max_steps=3, accumulation=1, world=1, rank=0, batch=2)
        return [b["hr"] for b in make_loader(dataset, sampler, num_workers=workers, pin_memory=False)]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 2 and serial[0].shape == (2, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_degrade_batch_synthesises_lr_and_keeps_pairs():
    config = load_train_config(None, ["data.crop_size=64"]).degradation
    hr = torch.from_numpy(np.stack([photo(64, 64, s) for s in range(3)])).permute(0, 3, 1, 2).float() / 255
    given = torch.full((3, 3, 16, 16), 0.5)
    batch = {"hr": hr, "lr": given, "paired": torch.tensor([False, True, False])}
    out_hr, lr = degrade_batch(batch, config, generator_for(0, "d"), torch.device("cpu"))
    assert torch.equal(out_hr, hr) and lr.shape == (3, 3, 16, 16)
    assert torch.equal(lr[1], given[1])  # a pre-made LR stays as it is
    assert not torch.equal(lr[0], given[0]) and float(lr.min()) >= 0 and float(lr.max()) <= 1
    synthetic = lr[[0, 2]] * 255
    assert torch.allclose(synthetic, synthetic.round(), atol=1e-3)  # 8-bit levels, as Real-ESRGAN
    again = degrade_batch(batch, config, generator_for(0, "d"), torch.device("cpu"))[1]
    assert torch.equal(lr, again)
    other = degrade_batch(batch, config, generator_for(1, "d"), torch.device("cpu"))[1]
    assert not torch.equal(lr[0], other[0])
