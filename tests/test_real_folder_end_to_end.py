"""A user's photo folder, end to end through the CLI: RGB JPEGs, grayscale PNGs and RGBA PNGs of mixed sizes
go through train -> export (fp32, fp16, int8) -> index -> search -> eval, and every step's files read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

CLASSES = 6
PER_CLASS = 12


def photo(rng: np.random.Generator, label: int, width: int, height: int) -> np.ndarray:
    """A photo-like RGB image: a class-specific colour gradient and blob, random placement, noise."""
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    hue = np.array([(label * 53) % 255, (label * 97) % 255, (label * 151) % 255], np.float64) / 255
    cy, cx = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.01 * (label % 3)))
    angle = label * np.pi / CLASSES
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    image = 0.5 * hue[None, None] * (0.6 + ramp[..., None]) + 0.4 * blob[..., None] * (1 - hue[None, None])
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path):
    """root/<class>/: per class, RGB JPEGs of 120x90 and 90x120, one grayscale PNG, one RGBA PNG."""
    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    for label in range(CLASSES):
        folder = root / f"part-{label}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            width, height = (120, 90) if i % 2 == 0 else (90, 120)
            pixels = photo(rng, label, width, height)
            if i == 0:
                Image.fromarray(pixels).convert("L").save(folder / f"{i}.png")
            elif i == 1:
                rgba = np.dstack([pixels, np.full(pixels.shape[:2], 200, np.uint8)])
                Image.fromarray(rgba, "RGBA").save(folder / f"{i}.png")
            else:
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)
    return root


@pytest.mark.slow
def test_a_mixed_photo_folder_goes_through_train_export_index_search_eval(cli, photo_folder, tmp_path):
    run = tmp_path / "run"
    trained = cli(
        "train",
        "--data",
        photo_folder,
        "--out",
        run,
        "--backbone",
        "tiny",
        "--dim",
        "16",
        "--epochs",
        "2",
        "--samples-per-class",
        "4",
        "--device",
        "cpu",
    )
    assert trained.exit_code == 0, trained.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["input_size"] == 96  # the median shorter side, 90 px, to a multiple of 32
    assert config["batch_size"] == 12  # 3 training classes x 4: the default batch capped
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images"]["train"] + summary["images"]["val"] + summary["images"]["test"] == CLASSES * PER_CLASS
    assert summary["skipped_images"] == 0  # grayscale and RGBA PNGs are used, not skipped

    exported = cli("export", run, "--half", "--int8", "--json")
    assert exported.exit_code == 0, exported.output
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        assert (run / name).is_file(), name

    index = tmp_path / "index"
    built = cli("index", run / "model.int8.onnx", "--gallery", photo_folder, "--out", index)
    assert built.exit_code == 0, built.output
    query = photo_folder / "part-4" / "1.png"  # an RGBA query
    found = cli("search", index, query, "--top-k", "3", "--json")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    first = hits[0] if isinstance(hits, list) else hits
    assert "part-4" in json.dumps(first)  # the query itself is in the gallery: its own class comes back

    for model in (run, run / "model.onnx", run / "model.fp16.onnx", run / "model.int8.onnx"):
        scored = cli("eval", model, "--json")
        assert scored.exit_code == 0, (model, scored.output)
        metrics = json.loads(scored.stdout)
        assert 0.0 <= metrics["recall_at_1"] <= 1.0
