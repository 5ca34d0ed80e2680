"""Effects of each op in runner/core/augment.py, checked on CPU against references or measurements.

Run: .venv/bin/pytest tests/test_augment.py
"""

import math

import pytest
import torch
import torchvision.transforms.functional as TF

from runner.core import augment as A

OFF = {"crop_padding": 0, "hflip": False, "vflip": False, "rotate_deg": 0.0,
       "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "cutout": 0}
ALL_ON = {"crop_padding": 4, "hflip": True, "vflip": True, "rotate_deg": 10.0,
          "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "cutout": 8}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct(b: int, c: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """A batch whose pixels are all different, so every flip/shift of it is recognisable."""
    return torch.randn(b, c, h, w, generator=gen(123))


def uint8_batch(b: int) -> torch.Tensor:
    return torch.randint(0, 256, (b, 32, 32, 3), generator=gen(7), dtype=torch.uint8)


def flips_match(x: torch.Tensor, out: torch.Tensor, dim: int) -> torch.Tensor:
    """Per image: True if flipped, False if untouched; fails if neither."""
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(dim)).flatten(1).all(1)
    assert (same ^ flipped).all()
    return flipped


@pytest.mark.parametrize("op, dim", [(A.hflip, 3), (A.vflip, 2)])
def test_flip_flips_about_half_of_the_images(op, dim):
    x = distinct(2000, c=1, h=6, w=6)
    flipped = flips_match(x, op(x, gen()), dim)
    assert 900 < int(flipped.sum()) < 1100


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_is_a_shifted_window_of_the_padded_image(mode):
    pad, b = 3, 200
    x = distinct(b, c=2, h=12, w=12)
    out = A.random_crop(x, pad, gen(), mode=mode)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else "reflect")
    shifts = []
    for i in range(b):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 12, dx:dx + 12])]
        assert len(found) == 1, f"image {i} is no window of its padded input"
        shifts.append(found[0])
    assert {dy for dy, _ in shifts} == set(range(2 * pad + 1))
    assert {dx for _, dx in shifts} == set(range(2 * pad + 1))


def test_crop_padding_zero_is_identity():
    x = distinct(4)
    assert torch.equal(A.random_crop(x, 0, gen()), x)


def line_angles(images: torch.Tensor) -> torch.Tensor:
    """Angle (degrees, clockwise on screen) of the principal axis of each [1, H, W] intensity image."""
    _, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    m = images[:, 0]
    mu20 = (m * xs * xs).sum((1, 2))
    mu02 = (m * ys * ys).sum((1, 2))
    mu11 = (m * xs * ys).sum((1, 2))
    return torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))


def test_rotate_angles_lie_in_range_and_vary():
    b, size = 300, 64
    x = torch.zeros(b, 1, size, size)
    x[:, :, size // 2 - 1:size // 2 + 1, 8:-8] = 1.0  # a horizontal bar through the centre
    assert line_angles(x).abs().max() < 1e-3
    angles = line_angles(A.rotate(x, 15.0, gen()))
    assert angles.abs().max() < 15.0 + 1.0
    assert angles.min() < -12 and angles.max() > 12
    assert angles.std() > 6  # uniform on [-15, 15] has std 8.7


def test_rotate_matches_a_reference_quarter_turn():
    # With max_deg=90 some draws come close to +-90; those must look like torch.rot90 of the input
    # (rotation about the image centre, no shear or scale).
    x = torch.zeros(2000, 1, 33, 33)
    x[:, :, 16, 16:30] = 1.0
    out = A.rotate(x, 90.0, gen())
    cw = torch.rot90(x, k=-1, dims=(2, 3))
    err = (out - cw).abs().flatten(1).amax(1)
    assert err.min() < 0.2  # some draw lands within a degree or so of a quarter turn


def test_rotate_samples_the_affine_grid_of_a_rotation():
    # Non-square, so a swapped height/width would show.
    x, g = distinct(8, h=12, w=20), gen(4)
    theta = (2 * torch.rand(8, 1, 1, generator=gen(4)) - 1) * math.radians(30)
    c, s, z = theta.cos().flatten(), theta.sin().flatten(), torch.zeros(8)
    mat = torch.stack([c, s, z, -s, c, z], dim=1).view(8, 2, 3)
    grid = torch.nn.functional.affine_grid(mat, list(x.shape), align_corners=False)
    expected = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(A.rotate(x, 30.0, g), expected, atol=1e-5, rtol=0)


def test_rotate_zero_is_identity():
    x = distinct(4)
    assert torch.equal(A.rotate(x, 0.0, gen()), x)


def test_cutout_zeroes_one_square_clipped_at_borders():
    size, b = 8, 1000
    x = torch.ones(b, 3, 32, 32)
    out = A.cutout(x, size, gen())
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    zero = zero[:, 0]
    rows, cols = zero.any(2), zero.any(1)
    counts = zero.flatten(1).sum(1)
    # The zeros form the full rectangle spanned by their rows and columns, at most size x size.
    assert torch.equal(counts, rows.sum(1) * cols.sum(1))
    assert counts.max() == size * size and counts.min() > 0
    touches_border = rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1]
    assert (counts[~touches_border] == size * size).all()
    assert (counts[touches_border] < size * size).any()  # centre uniform: some squares are clipped
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])


def test_brightness_scales_within_factor_range():
    x = torch.full((500, 3, 8, 8), 0.5)
    out = A.color_jitter(x, 0.4, 0.0, 0.0, gen())
    factor = out.mean((1, 2, 3)) / 0.5
    assert factor.min() >= 0.6 - 1e-6 and factor.max() <= 1.4 + 1e-6
    assert factor.min() < 0.65 and factor.max() > 1.35


def test_contrast_and_saturation_factors_within_range():
    x = 0.4 + 0.2 * torch.rand(500, 3, 8, 8, generator=gen(1))  # in [0.4, 0.6]: no clamping at f <= 2
    grey = A.grayscale(x)
    out = A.color_jitter(x, 0.0, 0.0, 1.0, gen())
    f = ((out - grey) * (x - grey)).sum((1, 2, 3)) / ((x - grey) ** 2).sum((1, 2, 3))
    assert f.min() > -1e-4 and f.max() < 2 + 1e-4 and f.std() > 0.4
    out = A.color_jitter(x, 0.0, 0.5, 0.0, gen())
    f = out.std((1, 2, 3)) / x.std((1, 2, 3))
    assert f.min() > 0.5 - 1e-4 and f.max() < 1.5 + 1e-4 and f.std() > 0.2


def test_colour_adjustments_match_torchvision():
    x = torch.rand(3, 8, 8, generator=gen(2))
    for ours, theirs in ((A.adjust_brightness, TF.adjust_brightness),
                         (A.adjust_contrast, TF.adjust_contrast),
                         (A.adjust_saturation, TF.adjust_saturation)):
        for f in (0.0, 0.7, 1.3):
            got = ours(x[None], torch.tensor(f).view(1, 1, 1, 1))[0]
            torch.testing.assert_close(got, theirs(x, f), atol=1e-5, rtol=0)


def test_saturation_factor_zero_gives_grey():
    x = torch.rand(4, 3, 8, 8, generator=gen(3))
    out = A.adjust_saturation(x, torch.zeros(4, 1, 1, 1))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


@pytest.mark.parametrize("channels_last", [False, True])
def test_to_float_normalises_with_the_data_stats(channels_last):
    # Channels with different ranges, so per-channel stats matter.
    u = torch.stack([torch.randint(lo, hi, (256, 32, 32), generator=gen(i), dtype=torch.uint8)
                     for i, (lo, hi) in enumerate([(0, 100), (50, 250), (200, 256)])], dim=-1)
    unit = u.double() / 255
    mean, std = unit.mean((0, 1, 2)).tolist(), unit.std((0, 1, 2)).tolist()
    x = A.to_float(u, mean, std, channels_last)
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_same_seed_same_batch():
    aug = A.Augment(ALL_ON, mean=[0.5] * 3, std=[0.25] * 3, channels_last=True)
    u = uint8_batch(32)
    a, b, c = aug(u, gen(5)), aug(u, gen(5)), aug(u, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (32, 3, 32, 32) and a.is_contiguous(memory_format=torch.channels_last)


def test_all_ops_off_equals_eval():
    aug = A.Augment(OFF, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], channels_last=False)
    u = uint8_batch(16)
    assert torch.equal(aug(u, gen()), aug.eval(u))


def test_augment_applies_only_enabled_ops():
    aug = A.Augment({**OFF, "hflip": True}, mean=[0.5] * 3, std=[0.25] * 3, channels_last=False)
    u = uint8_batch(200)
    flipped = flips_match(aug.eval(u), aug(u, gen()), dim=3)
    assert 0 < int(flipped.sum()) < 200


@pytest.mark.parametrize("cfg", [ALL_ON, {**ALL_ON, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0},
                                 {**OFF, "vflip": True, "cutout": 5}, {**OFF, "hflip": True, "vflip": True}])
def test_augment_equals_the_functions_in_order(cfg):
    # Augment fuses crop and flips into one gather; the result must not change.
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    u, g = uint8_batch(64), gen(9)
    if cfg["brightness"]:
        x = A.color_jitter(A.to_unit(u), cfg["brightness"], cfg["contrast"], cfg["saturation"], g)
        x = A.normalise(x, mean, std)
    else:
        x = A.to_float(u, mean, std, channels_last=False)
    x = A.random_crop(x, cfg["crop_padding"], g)
    x = A.hflip(x, g) if cfg["hflip"] else x
    x = A.vflip(x, g) if cfg["vflip"] else x
    x = A.cutout(A.rotate(x, cfg["rotate_deg"], g), cfg["cutout"], g)
    torch.testing.assert_close(A.Augment(cfg, mean, std, channels_last=True)(u, gen(9)), x, rtol=0, atol=1e-6)


def test_eval_views_for_each_tta_mode():
    aug = A.Augment(ALL_ON, mean=[0.5] * 3, std=[0.25] * 3, channels_last=False)
    u = uint8_batch(16)
    (plain,) = aug.views(u, "none", 1)
    assert torch.equal(plain, aug.eval(u))
    flips = aug.views(u, "flips", 3)
    for view, expected in zip(flips, A.tta_views(aug.eval(u), 3), strict=True):
        assert torch.equal(view, expected)
    assert torch.equal(flips[1], plain.flip(3))
    # train_transforms: successive draws of the trial's own train augmentation (E6), reproducible by seed
    drawn, g = aug.views(u, "train_transforms", 3, gen(4)), gen(4)
    assert len(drawn) == 3 and all(torch.equal(v, aug(u, g)) for v in drawn)
    assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], plain)


def test_tta_views():
    x = distinct(4)
    assert len(A.tta_views(x, 1)) == 1 and torch.equal(A.tta_views(x, 1)[0], x)
    views = A.tta_views(x, A.MAX_TTA_VIEWS)
    assert len(views) == A.MAX_TTA_VIEWS and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(3))
    assert torch.equal(views[2][..., 2:], x[..., :-2])  # content moved 2 px right
    assert len({tuple(v.flatten()[:50].tolist()) for v in views}) == len(views)
    assert torch.equal(A.tta_views(x, 3)[2], views[2])
    with pytest.raises(ValueError, match="tta views must be between 1 and"):
        A.tta_views(x, 0)
    with pytest.raises(ValueError, match="tta views must be between 1 and"):
        A.tta_views(x, A.MAX_TTA_VIEWS + 1)


def test_line_angle_helper_measures_clockwise_degrees():
    x = torch.zeros(1, 1, 64, 64)
    s, c = math.sin(math.radians(30)), math.cos(math.radians(30))
    for i in range(-20, 21):  # a line at +30 degrees clockwise on screen (row grows downwards)
        x[0, 0, round(31.5 + i * s), round(31.5 + i * c)] = 1
    assert abs(float(line_angles(x)[0]) - 30) < 2
