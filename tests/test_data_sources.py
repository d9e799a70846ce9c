"""Data sources (digits, ImageFolder, CSV manifest), the up-front image scan, and the fault-tolerant dataset."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgedml.data import ImageDataset, collate_skip_bad, eval_transform, load_source, scan_samples
from edgedml.data.sources import Sample
from edgedml.errors import DataError

# --------------------------------------------------------------------------- helpers


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    """A small random RGB PNG at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def write_image_folder(root: Path, counts: dict[str, int]) -> Path:
    """ImageFolder layout ``root/<class>/<i>.png`` with ``counts[class]`` images per class."""
    for class_index, (label, count) in enumerate(counts.items()):
        for i in range(count):
            write_png(root / label / f"{i}.png", seed=100 * class_index + i)
    return root


def write_random_bytes(path: Path, seed: int = 0) -> Path:
    """A file with an image suffix whose content is not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(200))
    return path


def write_truncated_png(path: Path) -> Path:
    """A valid PNG header followed by only half of the image data."""
    write_png(path, size=16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_csv(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def warnings_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="edgedml")
    return caplog


# --------------------------------------------------------------------------- digits


def test_digits_has_1797_uint8_samples_in_10_classes():
    source = load_source("digits")

    assert len(source.samples) == 1797
    assert source.classes == [str(d) for d in range(10)]
    # the UCI optical digits that scikit-learn ships: 178, 182, 177, 183, 181, 182, 181, 179, 174, 180 images of 0..9
    per_digit = Counter(s.label for s in source.samples)
    assert [per_digit[str(d)] for d in range(10)] == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert min(Counter(s.label for s in source.samples).values()) >= 170  # roughly balanced, ~180 each
    assert source.default_input_size == 32
    assert not source.has_splits
    images = [s.image for s in source.samples]
    assert all(isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.shape == (8, 8) for im in images)
    stacked = np.stack(images)
    assert stacked.min() == 0 and stacked.max() == 255  # rescaled from sklearn's 0..16


def test_digits_arrays_pass_the_scan_untouched():
    source = load_source("digits")
    result = scan_samples(source.samples[:50])
    assert result.usable == source.samples[:50]
    assert result.skipped == []


# --------------------------------------------------------------------------- ImageFolder


def test_image_folder_loads_labels_and_counts(tmp_path):
    counts = {"ant": 3, "bee": 4, "cat": 2, "dog": 5}
    root = write_image_folder(tmp_path / "data", counts)
    write_png(root / "bee" / "nested" / "extra.png", seed=7)  # sub-folders belong to their class
    (root / "ant" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    write_png(root / ".cache" / "x.png")  # hidden folders are not classes
    write_png(root / "stray.png")  # files at the root are not classes

    source = load_source(str(root))

    assert source.classes == ["ant", "bee", "cat", "dog"]
    assert Counter(s.label for s in source.samples) == {"ant": 3, "bee": 5, "cat": 2, "dog": 5}
    for sample in source.samples:
        path = Path(sample.image)
        assert path.is_file() and path.suffix == ".png"
        assert path.relative_to(root).parts[0] == sample.label
        assert sample.split is None
    assert source.default_input_size == 128


def test_image_folder_with_an_empty_class_folder_names_it(tmp_path):
    root = write_image_folder(tmp_path / "data", {"ant": 2, "bee": 2})
    (root / "ghost").mkdir()
    (root / "ghost" / "readme.txt").write_text("no images here")

    with pytest.raises(DataError, match="holds no images") as info:
        load_source(str(root))
    assert str(root / "ghost") in info.value.message


def test_empty_root_is_an_error(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError, match="no class folders with images") as info:
        load_source(str(root))
    assert str(root) in info.value.message


def test_nonexistent_path_is_a_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="no such file or folder") as info:
        load_source(str(missing))
    assert str(missing) in info.value.message
    assert "digits" in info.value.hint  # the hint lists the named sources


def test_existing_file_that_is_not_a_csv_is_a_data_error(tmp_path):
    path = write_png(tmp_path / "one.png")
    with pytest.raises(DataError, match=re.escape("not a folder or a .csv manifest")):
        load_source(str(path))


def test_single_class_is_rejected(tmp_path):
    root = write_image_folder(tmp_path / "data", {"only": 3})
    with pytest.raises(DataError, match=r"found 1 class\(es\); metric learning needs at least 2"):
        load_source(str(root))


# --------------------------------------------------------------------------- CSV manifests


@pytest.fixture
def manifest_images(tmp_path) -> Path:
    """``tmp_path/set/imgs/{a0,a1,b0,b1}.png``; returns the ``set`` folder (where the manifests go)."""
    folder = tmp_path / "set"
    for i, name in enumerate(["a0", "a1", "b0", "b1"]):
        write_png(folder / "imgs" / f"{name}.png", seed=i)
    return folder


def loaded_rows(source) -> list[tuple[str, str, str | None]]:
    return [(s.image, s.label, s.split) for s in source.samples]


@pytest.mark.parametrize(
    ("header", "row"),
    [
        (None, "{path},{label}"),
        ("path,label", "{path},{label}"),
        (" Label , PATH ", "{label},{path}"),  # columns found by name, any case, padded
    ],
    ids=["no-header", "header", "reordered-header"],
)
def test_csv_manifest_with_and_without_header(manifest_images, header, row):
    rows = [row.format(path=f"imgs/{name}.png", label=name[0]) for name in ("a0", "a1", "b0", "b1")]
    csv_path = write_csv(manifest_images / "m.csv", *([header] if header else []), *rows)

    source = load_source(str(csv_path))

    imgs = manifest_images / "imgs"
    assert loaded_rows(source) == [
        (str(imgs / "a0.png"), "a", None),
        (str(imgs / "a1.png"), "a", None),
        (str(imgs / "b0.png"), "b", None),
        (str(imgs / "b1.png"), "b", None),
    ]
    assert source.classes == ["a", "b"]
    assert not source.has_splits


def test_csv_manifest_split_column(manifest_images):
    csv_path = write_csv(
        manifest_images / "m.csv",
        "path,label,split",
        "imgs/a0.png,a,train",
        "imgs/a1.png,a,VAL",  # case-insensitive
        "imgs/b0.png,b, test ",  # padded
        "imgs/b1.png,b,",  # empty cell: no split
    )
    source = load_source(str(csv_path))
    assert [s.split for s in source.samples] == ["train", "val", "test", None]
    assert source.has_splits


def test_csv_manifest_without_header_reads_a_third_column_as_split(manifest_images):
    csv_path = write_csv(manifest_images / "m.csv", "imgs/a0.png,a,train", "imgs/b0.png,b,test")
    source = load_source(str(csv_path))
    assert [(s.label, s.split) for s in source.samples] == [("a", "train"), ("b", "test")]


def test_csv_relative_paths_resolve_against_the_manifest_folder_not_the_cwd(manifest_images, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    absolute = write_png(tmp_path / "abs" / "c0.png")
    csv_path = write_csv(manifest_images / "m.csv", "path,label", "imgs/a0.png,a", f"{absolute},c")

    source = load_source(str(csv_path))

    assert [s.image for s in source.samples] == [str(manifest_images / "imgs" / "a0.png"), str(absolute)]
    assert all(Path(s.image).is_file() for s in source.samples)


@pytest.mark.parametrize(
    ("lines", "bad_line"),
    [
        (["path,label,split", "imgs/a0.png,a,train", "imgs/b0.png,b,bogus"], 3),
        (["imgs/a0.png,a,train", "imgs/b0.png,b,bogus"], 2),
    ],
    ids=["header", "no-header"],
)
def test_csv_bad_split_value_names_the_line(manifest_images, lines, bad_line):
    csv_path = write_csv(manifest_images / "m.csv", *lines)
    with pytest.raises(DataError) as info:
        load_source(str(csv_path))
    assert info.value.message.startswith(f"{csv_path}:{bad_line}: split 'bogus'")
    assert "train, val, test" in info.value.message


def test_csv_row_with_too_few_cells_names_the_line(manifest_images):
    csv_path = write_csv(manifest_images / "m.csv", "path,label", "imgs/a0.png,a", "imgs/b0.png")
    with pytest.raises(DataError) as info:
        load_source(str(csv_path))
    assert info.value.message.startswith(f"{csv_path}:3: expected 'path,label[,split]'")


def test_empty_csv_manifest_is_an_error(tmp_path):
    csv_path = write_csv(tmp_path / "m.csv", "", "  ")
    with pytest.raises(DataError, match="manifest is empty"):
        load_source(str(csv_path))


# --------------------------------------------------------------------------- the up-front scan


def test_scan_skips_corrupt_truncated_and_missing_images(tmp_path, caplog_warnings):
    folder = tmp_path / "set"
    for i, name in enumerate(["a0", "a1", "b0", "b1", "c0"]):
        write_png(folder / f"{name}.png", seed=i)
    write_random_bytes(folder / "a_bad.png")
    write_truncated_png(folder / "b_cut.png")
    csv_path = write_csv(
        folder / "m.csv",
        "path,label",
        "a0.png,a",
        "a_bad.png,a",
        "a1.png,a",
        "b0.png,b",
        "b_cut.png,b",
        "b1.png,b",
        "c0.png,c",
        "c_gone.png,c",
    )
    source = load_source(str(csv_path))

    result = scan_samples(source.samples)

    assert [Path(s.image).name for s in result.usable] == ["a0.png", "a1.png", "b0.png", "b1.png", "c0.png"]
    assert result.skipped == [
        (str(folder / "a_bad.png"), "unreadable (UnidentifiedImageError)"),
        (str(folder / "b_cut.png"), "unreadable (OSError)"),
        (str(folder / "c_gone.png"), "missing"),
    ]
    warning = warnings_text(caplog_warnings)
    assert "skipped 3 unusable image(s)" in warning
    for path, _ in result.skipped:
        assert path in warning


def test_scan_warning_lists_five_paths_then_counts_the_rest(tmp_path, caplog_warnings):
    good = [Sample(str(write_png(tmp_path / f"{label}.png")), label) for label in ("a", "b")]
    bad = [Sample(str(write_random_bytes(tmp_path / f"bad{i}.png", seed=i)), "a") for i in range(7)]

    result = scan_samples(good + bad)

    assert len(result.skipped) == 7
    warning = warnings_text(caplog_warnings)
    assert "skipped 7 unusable image(s)" in warning
    assert "and 2 more" in warning
    assert str(tmp_path / "bad4.png") in warning and str(tmp_path / "bad5.png") not in warning


def test_scan_of_clean_samples_logs_nothing(tmp_path, caplog_warnings):
    root = write_image_folder(tmp_path / "data", {"a": 2, "b": 2})
    result = scan_samples(load_source(str(root)).samples)
    assert len(result.usable) == 4 and result.skipped == []
    assert warnings_text(caplog_warnings) == ""


def test_class_whose_images_are_all_unreadable_is_named(tmp_path, caplog_warnings):
    root = write_image_folder(tmp_path / "data", {"ant": 2, "bee": 2})
    write_random_bytes(root / "wasp" / "0.png")
    write_truncated_png(root / "wasp" / "1.png")
    source = load_source(str(root))

    with pytest.raises(DataError, match="class 'wasp' has no readable image left") as info:
        scan_samples(source.samples)
    assert "unreadable" in info.value.hint
    assert str(root / "wasp" / "0.png") in warnings_text(caplog_warnings)  # the warning came first


# --------------------------------------------------------------------------- dataset and collate


@pytest.fixture
def dataset(tmp_path) -> ImageDataset:
    samples = [Sample(str(write_png(tmp_path / f"{i}.png", seed=i, size=12)), label) for i, label in enumerate("aab")]
    return ImageDataset(samples, {"a": 0, "b": 1}, eval_transform(8))


def test_dataset_items_are_transformed_tensors_with_labels_and_indices(dataset):
    image, label, index = dataset[(2, 123)]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert (label, index) == (1, 2)
    assert dataset.labels == [0, 0, 1]
    assert len(dataset) == 3
    assert torch.equal(dataset[2][0], image)  # a plain int key works too


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_image_broken_after_scan_gives_none_and_is_dropped_from_its_batch(dataset, caplog_warnings, damage):
    broken = Path(dataset.samples[1].image)
    if damage == "corrupt":
        write_random_bytes(broken)
    else:
        broken.unlink()

    items = [dataset[(i, i)] for i in range(len(dataset))]

    assert items[1] is None
    assert str(broken) in warnings_text(caplog_warnings)
    images, labels, indices = collate_skip_bad(items)
    assert images.shape == (2, 3, 8, 8)
    assert labels.tolist() == [0, 1]
    assert indices.tolist() == [0, 2]


def test_batch_with_only_bad_images_collates_to_none(dataset):
    for sample in dataset.samples:
        write_random_bytes(Path(sample.image))
    items = [dataset[i] for i in range(len(dataset))]
    assert items == [None, None, None]
    assert collate_skip_bad(items) is None


def test_csv_errors_name_the_file_line_even_after_blank_lines(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\n\nx.png,a,train\n\n\ny.png,b,bogus\n")
    with pytest.raises(DataError, match=r"m\.csv:6"):
        load_source(str(manifest))
