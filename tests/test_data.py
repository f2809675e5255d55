"""Image data sets: the digits split and user image folders (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scoredistill.data import load_digits_images, load_image_folder

PIL = pytest.importorskip("PIL.Image")


def test_digits_split_is_fixed_disjoint_and_stratified():
    train, test = load_digits_images("train"), load_digits_images("test")
    everything = load_digits_images("all")
    assert train.x.shape == (1347, 1, 8, 8) and test.x.shape == (450, 1, 8, 8)
    assert train.x.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(everything.x.min()) == -1.0 and float(everything.x.max()) == 1.0
    # the two splits partition the 1797 images: every image is found exactly once
    rows = {tuple(r) for r in everything.x.flatten(1).tolist()}
    split_rows = [tuple(r) for r in torch.cat([train.x, test.x]).flatten(1).tolist()]
    assert len(split_rows) == 1797 and set(split_rows) == rows
    # stratified: each class holds a quarter of its images out (rounding: ±1)
    counts = everything.labels.bincount()
    assert (test.labels.bincount() - counts * 0.25).abs().max() <= 0.5
    assert torch.equal(load_digits_images("test").x, test.x)  # deterministic
    assert not torch.equal(load_digits_images("test", seed=1).x, test.x)
    assert train.classes == tuple(str(c) for c in range(10))


def test_digits_pixel_mapping():
    from sklearn.datasets import load_digits

    raw = load_digits().images
    x = load_digits_images("all").x
    np.testing.assert_array_equal(x[:, 0].numpy(), raw.astype(np.float32) / 8 - 1)


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(arr).save(path)


def test_class_folders_give_sorted_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name, n in (("zebra", 2), ("ant", 3)):
        for i in range(n):
            _write(tmp_path / name / f"{i}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    data = load_image_folder(tmp_path)
    assert data.classes == ("ant", "zebra")
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.x.shape == (5, 1, 6, 6)
    raw = np.asarray(PIL.open(tmp_path / "ant" / "0.png"), dtype=np.float32)
    np.testing.assert_allclose(data.x[0, 0].numpy(), raw / 127.5 - 1, atol=1e-6)


def test_flat_folder_is_unlabelled_and_rgb_kept(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _write(tmp_path / f"{i}.jpg", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    data = load_image_folder(tmp_path)
    assert data.labels is None and data.classes == ()
    assert data.x.shape == (3, 3, 4, 4)
    assert float(data.x.min()) >= -1 and float(data.x.max()) <= 1
    assert load_image_folder(tmp_path, channels=1).x.shape == (3, 1, 4, 4)


def test_resize_makes_mixed_sizes_loadable(tmp_path: Path):
    _write(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "b.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(ValueError, match=r"b\.png.*size=N"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=8).x.shape == (2, 1, 8, 8)


def test_bad_folders_name_the_problem(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    _write(bad / "ok.png", np.zeros((4, 4), np.uint8))
    (bad / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image_folder(bad)
    mixed = tmp_path / "mixed"
    _write(mixed / "cls" / "a.png", np.zeros((4, 4), np.uint8))
    _write(mixed / "loose.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="mixes class subfolders"):
        load_image_folder(mixed)
