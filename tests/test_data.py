"""Image sources: Fashion-MNIST IDX files, synthetic images, and image folders with bad files."""

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.data import (
    FASHION_MNIST_FILES,
    VAL_ID_OFFSET,
    ImageDataset,
    adm_center_crop,
    build_manifest,
    check_image_file,
    load_split_images,
    read_idx,
    synthetic_image,
)
from pipeline.errors import DataSourceError
from pipeline.stages.prepare import run as prepare

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(directory, n_train=30, n_val=10):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        images, labels = FASHION_MNIST_FILES[split]
        _write_idx(directory / images, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(directory / labels, np.arange(n) % 10)
    return directory


def _run_prepare(tmp_path, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"data": data})
    prepare(cfg)
    return cfg


# -- Fashion-MNIST ----------------------------------------------------------------------------


def test_idx_reader_round_trip(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


def test_truncated_idx_names_the_file(tmp_path):
    directory = _fake_fashion_mnist(tmp_path / "fm")
    victim = directory / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(victim.read_bytes())
    with gzip.open(victim, "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    with pytest.raises(DataSourceError, match=r"train-images-idx3-ubyte.gz is truncated"):
        read_idx(victim)
    victim.write_bytes(victim.read_bytes()[:40])  # a cut gzip stream
    with pytest.raises(DataSourceError, match=r"train-images-idx3-ubyte.gz is corrupt or truncated"):
        read_idx(victim)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataSourceError) as info:
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)
    assert "data.fashion_mnist_dir" in str(info.value)


def test_fashion_mnist_manifest_and_pixels(tmp_path, monkeypatch):
    directory = _fake_fashion_mnist(tmp_path / "fm")
    cfg = _run_prepare(tmp_path, monkeypatch, {"fashion_mnist_dir": str(directory), "max_train": 20})
    manifest = pq.read_table(tmp_path / "data/prepared/manifest.parquet").to_pylist()
    train = [r for r in manifest if r["split"] == "train"]
    val = [r for r in manifest if r["split"] == "val"]
    assert len(train) == 20 and len(val) == 10
    assert val[0]["image_id"] == VAL_ID_OFFSET
    assert [r["label"] for r in train[:3]] == [0, 1, 2]
    images, _labels, _ids = load_split_images(cfg, "val")
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.uint8
    expected = read_idx(directory / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(images[:, 0], expected)
    metrics = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert metrics["images"] == {"train": 20, "val": 10}


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_sizes():
    cfg = config_from_dict({})
    _table, report, names = build_manifest(cfg)
    assert report.counts == {"train": 60000, "val": 10000}
    assert len(names) == 10


# -- synthetic --------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_class_dependent():
    a, label_a = synthetic_image(7, "train", 16, 1, 4)
    b, _ = synthetic_image(7, "train", 16, 1, 4)
    np.testing.assert_array_equal(a, b)
    assert label_a == 7 % 4 and a.shape == (1, 16, 16)
    means = [np.mean([synthetic_image(i, "train", 16, 1, 4)[0] for i in range(c, 80, 4)], axis=0)
             for c in range(4)]
    # Class means differ clearly: the classes are distinguishable, which later stages rely on.
    assert min(np.abs(means[i] - means[j]).mean() for i in range(4) for j in range(i)) > 5
    rgb, _ = synthetic_image(3, "val", 16, 3, 4)
    assert rgb.shape == (3, 16, 16)


def test_synthetic_source_needs_sizes():
    with pytest.raises(Exception, match="max_train"):
        config_from_dict({"data": {"source": "synthetic"}})


# -- image folders ----------------------------------------------------------------------------


def _save(path, image, fmt, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    path.write_bytes(buffer.getvalue())
    return path


def _folder(tmp_path, bad=True):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    _save(root / "cat/a.jpg", rgb(60, 40), "JPEG")
    _save(root / "cat/b.png", rgb(40, 64).convert("L"), "PNG")  # grayscale
    _save(root / "cat/c.jpg", rgb(50, 50).convert("CMYK"), "JPEG")  # CMYK
    _save(root / "dog/d.png", rgb(70, 30).convert("P"), "PNG")  # palette
    rgba = rgb(32, 32).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: must come out white, not black
    _save(root / "dog/e.png", rgba, "PNG")
    _save(root / "dog/f.png", rgb(64, 64), "PNG")
    if bad:
        (root / "dog/empty.jpg").write_bytes(b"")
        full = _save(root / "cat/truncated.jpg", rgb(64, 64), "JPEG").read_bytes()
        (root / "cat/truncated.jpg").write_bytes(full[: len(full) // 2])
        (root / "cat/notes.txt").write_text("not an image")
    return root


def test_check_image_file_reasons(tmp_path):
    root = _folder(tmp_path)
    assert check_image_file(str(root / "cat/a.jpg")) is None
    assert check_image_file(str(root / "dog/empty.jpg")) == "empty"
    assert check_image_file(str(root / "cat/truncated.jpg")) == "truncated"
    assert check_image_file(str(root / "cat/notes.txt")) == "not_an_image"


def test_imagefolder_skips_and_counts_bad_files(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    data = {"source": "imagefolder", "root": str(root), "val_root": str(root), "image_size": 16,
            "max_bad_fraction": 0.5, "workers": 0}
    cfg = _run_prepare(tmp_path, monkeypatch, data)
    metrics = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert metrics["skipped"]["empty"] == 2  # once as train, once as val
    assert metrics["skipped"]["truncated"] == 2
    assert metrics["skipped"]["not_an_image"] == 2
    assert metrics["images"] == {"train": 6, "val": 6}
    assert json.loads((tmp_path / "data/prepared/classes.json").read_text()) == ["cat", "dog"]
    skipped = (tmp_path / "data/prepared/skipped.csv").read_text()
    assert "truncated.jpg,truncated" in skipped
    dataset = ImageDataset(cfg, "train")
    images = [dataset[i][0] for i in range(len(dataset))]
    assert all(tuple(img.shape) == (3, 16, 16) for img in images)
    transparent = next(i for i, path in enumerate(dataset.paths) if path.endswith("e.png"))
    assert int(images[transparent].min()) == 255  # composited on white, not dropped to black


def test_imagefolder_too_many_bad_files_fails_with_examples(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    data = {"source": "imagefolder", "root": str(root), "val_fraction": 0.3, "max_bad_fraction": 0.1,
            "workers": 0}
    with pytest.raises(DataSourceError) as info:
        _run_prepare(tmp_path, monkeypatch, data)
    message = str(info.value)
    assert "3 of 9 files" in message and "data.max_bad_fraction" in message
    assert "truncated.jpg (truncated)" in message
    assert not (tmp_path / "data/prepared").exists()  # nothing half-written


def test_held_out_val_is_deterministic(tmp_path, monkeypatch):
    root = _folder(tmp_path, bad=False)
    data = {"source": "imagefolder", "root": str(root), "val_fraction": 0.4, "image_size": 16, "workers": 0}
    cfg = config_from_dict({"data": data})
    first, _, _ = build_manifest(cfg)
    second, _, _ = build_manifest(cfg)
    assert first.equals(second)
    assert set(first.column("split").to_pylist()) == {"train", "val"}


def test_class_names_mapping(tmp_path, monkeypatch):
    root = _folder(tmp_path, bad=False)
    names = tmp_path / "names.txt"
    names.write_text("cat Felis catus\ndog Canis familiaris\n")
    data = {"source": "imagefolder", "root": str(root), "val_fraction": 0.4, "workers": 0,
            "class_names": str(names)}
    _run_prepare(tmp_path, monkeypatch, data)
    assert json.loads((tmp_path / "data/prepared/classes.json").read_text()) == ["Felis catus",
                                                                                "Canis familiaris"]


def test_adm_center_crop_sizes():
    image = Image.new("RGB", (1000, 600), (10, 20, 30))
    out = adm_center_crop(image, 256)
    assert out.size == (256, 256)
    assert adm_center_crop(Image.new("RGB", (100, 300)), 64).size == (64, 64)


def test_flip_augmentation_ids_and_pixels(tmp_path, monkeypatch):
    cfg = _run_prepare(tmp_path, monkeypatch, {"source": "synthetic", "max_train": 4, "max_val": 2,
                                               "image_size": 16})
    plain = ImageDataset(cfg, "train")
    flipped = ImageDataset(cfg, "train", flip=True)
    assert len(flipped) == 2 * len(plain)
    image, label, image_id = flipped[3]
    original, original_label, original_id = plain[1]
    assert image_id == 2_000_000_000 + original_id and label == original_label
    np.testing.assert_array_equal(image.numpy(), original.numpy()[..., ::-1])
