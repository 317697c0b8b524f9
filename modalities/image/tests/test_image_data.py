"""distill_image.data: digits, photo crops, image folders and the datamodule."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from distill.errors import DistillError
from distill_image.data import (
    PHOTOS,
    ImageDataModule,
    ImageFolderDataset,
    load_digits_tensor,
    load_photo,
    photo_crops,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_labels():
    images, labels = load_digits_tensor()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.long
    assert float(images.min()) == -1.0 and float(images.max()) <= 1.0 and float(images.max()) > 0.9
    # scikit-learn's digits: 10 classes with 174..183 images each (1,797 in all)
    counts = torch.bincount(labels, minlength=10)
    assert counts.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # background (value 0) is -1: the leftmost column is nearly always empty
    assert float(images[:, :, :, 0].mean()) < -0.99 and float(images.mean()) < -0.3


def test_digits_are_the_bilinear_upsampling_of_the_8x8_originals():
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)
    x8, _ = load_digits_tensor(8)
    assert torch.allclose(x8, raw / 8.0 - 1.0)
    x16, _ = load_digits_tensor(16)
    expected = F.interpolate(raw / 8.0 - 1.0, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(x16, expected, atol=1e-6)
    assert load_digits_tensor(24)[0].shape == (1797, 1, 24, 24)


def test_digits_are_deterministic_and_callers_get_copies():
    a, la = load_digits_tensor()
    a.fill_(0.0)
    la.fill_(3)
    b, lb = load_digits_tensor()
    c, lc = load_digits_tensor()
    assert torch.equal(b, c) and torch.equal(lb, lc)
    assert float(b.min()) == -1.0 and lb.unique().numel() == 10
    with pytest.raises(DistillError, match="resolution"):
        load_digits_tensor(1)


# --------------------------------------------------------------------------- photos


def test_bundled_photos_load_offline():
    for name in PHOTOS:
        x = load_photo(name)
        assert x.ndim == 3 and x.shape[0] == 3 and min(x.shape[1:]) >= 128, name
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert load_photo("astronaut", channels=1).shape == (1, 512, 512)
    with pytest.raises(DistillError, match="bundled photos"):
        load_photo("lena")


def test_photo_crops_shape_range_and_determinism():
    x = photo_crops(48, 16, gen(0))
    assert x.shape == (48, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.equal(x, photo_crops(48, 16, gen(0)))
    assert not torch.equal(x, photo_crops(48, 16, gen(1)))
    # crops are pictures, not flat fields, and differ from each other
    assert float(x.flatten(1).std(dim=1).mean()) > 0.05
    assert float((x[0] - x[1]).abs().mean()) > 0.0
    grey, labels = photo_crops(20, 8, gen(2), channels=1, photos=["camera", "coffee"], return_labels=True)
    assert grey.shape == (20, 1, 8, 8) and labels.dtype == torch.long
    assert set(labels.tolist()) <= {0, 1}


def test_photo_crops_come_from_the_photo():
    # every crop is a window of one level of the photo's 2x2-average pyramid
    x = photo_crops(6, 32, gen(3), channels=1, photos=["coins"])
    photo = load_photo("coins", channels=1).unsqueeze(0)  # 303 x 384
    levels = [photo]
    while min(levels[-1].shape[-2:]) // 2 >= 32:
        levels.append(F.avg_pool2d(levels[-1], 2))
    for crop in x:
        found = False
        for level in levels:
            # squared distance of the crop to every 32x32 window: sum w^2 - 2 <w, c> + sum c^2
            c = crop.unsqueeze(0)
            cross = F.conv2d(level, c)
            energy = F.avg_pool2d(level**2, 32, stride=1) * 32 * 32
            dist = energy - 2 * cross + (c**2).sum()
            found = found or bool((dist.abs() < 1e-3).any())
        assert found


def test_photo_crops_errors():
    with pytest.raises(DistillError, match="channels"):
        photo_crops(2, 8, gen(0), channels=2)
    with pytest.raises(DistillError, match="unknown photo"):
        photo_crops(2, 8, gen(0), photos=["nope"])


# --------------------------------------------------------------------------- folders


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    red = np.zeros((30, 40, 3), np.uint8)
    red[..., 0] = 255
    _png(root / "cats" / "a.png", red)
    # 48 wide, 16 tall: black | white | black thirds; resize is 1:1 at resolution 16
    # and the center crop keeps exactly the white middle
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, 16:32] = 255
    _png(root / "cats" / "b.png", wide)
    blue = np.zeros((50, 20, 3), np.uint8)
    blue[..., 2] = 255
    (root / "dogs").mkdir()
    Image.fromarray(blue).save(root / "dogs" / "c.jpg", quality=95)
    _png(root / "dogs" / "sub" / "d.png", np.full((16, 16), 200, np.uint8))  # grey, nested
    (root / "dogs" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_folder_dataset_classes_labels_and_preprocessing(folder):
    with pytest.warns(UserWarning, match="corrupt.png") as record:
        ds = ImageFolderDataset(folder, resolution=16, channels=3)
    assert sum("corrupt.png" in str(w.message) for w in record) == 1
    assert ds.classes == ["cats", "dogs"] and ds.num_classes == 2
    assert [p.name for p in ds.files] == ["a.png", "b.png", "c.jpg", "d.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert [p.name for p, _ in ds.skipped] == ["corrupt.png"]
    assert len(ds) == 4
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long and int(y) == 0
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[1:], -torch.ones(2, 16, 16))
    white, _ = ds[1]
    assert torch.allclose(white, torch.ones(3, 16, 16))  # center crop of the wide image
    blue, label = ds[2]
    assert int(label) == 1 and float(blue[2].mean()) > 0.9 and float(blue[0].mean()) < -0.9  # JPEG, lossy
    grey, _ = ds[3]
    assert torch.allclose(grey, torch.full((3, 16, 16), 200 / 127.5 - 1))
    images, labels = ds.tensors()
    assert images.shape == (4, 3, 16, 16) and torch.equal(labels, ds.labels)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0


def test_folder_dataset_grey_and_lazy(folder):
    with pytest.warns(UserWarning, match="corrupt.png"):
        eager = ImageFolderDataset(folder, resolution=8, channels=1)
    with pytest.warns(UserWarning, match="corrupt.png"):
        lazy = ImageFolderDataset(folder, resolution=8, channels=1, preload=False)
    assert eager[0][0].shape == (1, 8, 8)
    # red in BT.601 luma: 0.299 * 255
    assert abs(float(eager[0][0].mean()) - (round(0.299 * 255) / 127.5 - 1)) < 0.02
    for i in range(len(eager)):
        assert torch.equal(eager[i][0], lazy[i][0]) and torch.equal(eager[i][1], lazy[i][1])


def test_folder_without_class_folders_is_unlabelled(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", np.full((10, 12, 3), 40 * i, np.uint8))
    ds = ImageFolderDataset(tmp_path, resolution=4)
    assert ds.classes == [] and len(ds) == 3 and ds.labels.tolist() == [0, 0, 0]


def test_loose_images_next_to_class_folders_are_ignored_with_a_warning(tmp_path):
    _png(tmp_path / "a" / "1.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "loose.png", np.zeros((4, 4), np.uint8))
    with pytest.warns(UserWarning, match="loose.png"):
        ds = ImageFolderDataset(tmp_path, resolution=4)
    assert ds.classes == ["a"] and len(ds) == 1


def test_folder_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DistillError, match="contains no images"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(DistillError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DistillError, match="none of the 1 image"):
            ImageFolderDataset(tmp_path / "bad")
    with pytest.raises(DistillError, match="channels"):
        ImageFolderDataset(tmp_path / "bad", channels=4)


# --------------------------------------------------------------------------- datamodule


def test_datamodule_over_tensors_and_folders(folder):
    images, labels = load_digits_tensor()
    dm = ImageDataModule((images, labels), batch_size=64, seed=5)
    first = next(iter(dm.train_dataloader()))
    again = next(iter(ImageDataModule((images, labels), batch_size=64, seed=5).train_dataloader()))
    assert first[0].shape == (64, 1, 16, 16) and first[1].shape == (64,)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert len(dm.train_dataloader()) == 1797 // 64
    with pytest.warns(UserWarning):
        ds = ImageFolderDataset(folder, resolution=8)
    x, y = next(iter(ImageDataModule(ds, batch_size=8).train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and sorted(y.tolist()) == [0, 0, 1, 1]
    unlabelled = next(iter(ImageDataModule((images[:10], None), batch_size=4, shuffle=False).train_dataloader()))
    assert torch.equal(unlabelled[1], torch.zeros(4, dtype=torch.long))
    with pytest.raises(DistillError, match="labels"):
        ImageDataModule((images, labels[:5]))
