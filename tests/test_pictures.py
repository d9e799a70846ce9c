"""Pictures: search results (`search --show`), evaluation examples and embedding plots (`eval`), training curves."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error
from PIL import Image

from edgedml.data import Sample
from edgedml.errors import DataError
from edgedml.io import read_jsonl
from edgedml.retrieval.evaluate import EmbeddedSplit, SplitSettings
from edgedml.retrieval.pictures import (
    BACKDROP,
    CAPTION,
    FRAME,
    GAP,
    GREEN,
    GREY,
    QUERY,
    RED,
    THUMB,
    TILE,
    GridLayout,
    GridRow,
    Tile,
    embedding_figure,
    example_grid,
    example_queries,
    query_label,
    thumbnail,
    write_eval_examples,
    write_grid,
    write_search_grid,
)
from edgedml.retrieval.search import Hit, QueryResult
from edgedml.retrieval.store import Manifest
from edgedml.training.curves import CurvesFigure, curve_points


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory) -> Path:
    from edgedml.export.onnx import export_onnx

    return export_onnx(trained.run, out=tmp_path_factory.mktemp("export") / "model.onnx", evaluate=False).path


@pytest.fixture(scope="module")
def index_dir(cli, model, trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    result = cli("index", model, "--gallery", trained.data, "--out", out)
    assert result.exit_code == 0, str(result)
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def frame_colour(picture: np.ndarray, layout: GridLayout, row: int, column: int) -> np.ndarray:
    """The colour in the middle of the tile's left frame."""
    left, top, _, bottom = layout.tile_box(row, column)
    return picture[(top + bottom) // 2, left + FRAME // 2]


def layout_of(picture: np.ndarray, rows: int, columns: int) -> GridLayout:
    """The grid's layout, found from the picture's height (the title takes as many lines as it needs)."""
    for title_lines in range(1, 8):
        layout = GridLayout(rows, columns, title_lines)
        if layout.height == picture.shape[0]:
            return layout
    raise AssertionError(f"no layout of {rows} x {columns} is {picture.shape[0]} px high")


def assert_colour(actual: np.ndarray, expected: tuple[int, int, int]) -> None:
    assert np.abs(actual - np.array(expected)).max() <= 2, (actual, expected)


def split_of(labels: list[str], embeddings: np.ndarray, seed: int = 0) -> EmbeddedSplit:
    """A split of tiny grey images, each a shade of its own, with the given embeddings."""
    samples = [
        Sample(image=np.full((8, 8), 20 * i % 256, dtype=np.uint8), label=label) for i, label in enumerate(labels)
    ]
    normalized = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return EmbeddedSplit(normalized.astype(np.float32), samples, SplitSettings("digits", 0.5, 0.1, seed))


# ---- grids ----------------------------------------------------------------------------------------


def test_frames_are_green_for_the_query_class_and_red_for_another(tmp_path):
    labels = ["a", "a", "b", "b", "c", "c"]
    embedded = split_of(labels, np.random.default_rng(0).normal(size=(6, 4)))
    # every query's nearest is of another class, its second of its own: 6 failures, no success
    neighbours = np.array([[2, 1], [4, 0], [0, 3], [5, 2], [1, 5], [3, 4]])
    rows, title = example_grid(embedded, neighbours, rows=2)
    assert len(rows) == 2 and "2 with a wrong top-1" in title
    layout = write_grid(rows, title, tmp_path / "examples.png")
    picture = pixels(tmp_path / "examples.png")
    assert picture.shape == (layout.height, layout.width, 3)
    for r in range(2):
        assert_colour(frame_colour(picture, layout, r, 0), QUERY)
        assert_colour(frame_colour(picture, layout, r, 1), RED)  # top-1 of another class
        assert_colour(frame_colour(picture, layout, r, 2), GREEN)  # the query's own class
    assert [tile.frame for tile in rows[0].hits] == [RED, GREEN]
    assert rows[0].hits[0].caption[0].startswith("✗") and rows[0].hits[1].caption[0].startswith("✓")


def test_tiny_images_are_enlarged_with_sharp_pixels():
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    square = thumbnail(Image.fromarray(checker).convert("RGB"))
    assert square.shape == (THUMB, THUMB, 3)
    factor = THUMB // 8
    assert set(np.unique(square[:, :, 0])) == {0, 255}  # nearest-neighbour: no blurred grey in between
    assert (square[:factor, :factor] == 0).all() and (square[:factor, factor : 2 * factor] == 255).all()
    wide = thumbnail(Image.new("RGB", (400, 200), (255, 0, 0)))
    assert (wide[THUMB // 2, :, 0] == 255).all()  # fitted to the width, centred on the backdrop above and below
    assert tuple(wide[2, THUMB // 2]) != (255, 0, 0)


def test_the_grid_grows_with_rows_and_hits(tmp_path):
    def draw(rows: int, hits: int) -> tuple[int, int]:
        tile = Tile(Image.new("RGB", (8, 8)), ("label", "#1  0.900"), GREEN)
        write_grid([GridRow(tile, [tile] * hits)] * rows, "title", tmp_path / "grid.png")
        with Image.open(tmp_path / "grid.png") as image:
            return image.size

    small, wide, tall = draw(1, 2), draw(1, 5), draw(3, 2)
    assert 400 <= small[0] <= 500 and 200 <= small[1] <= 260  # three tiles of 124 px, a caption and a title line
    assert (wide[0] - small[0], wide[1]) == (3 * (TILE + GAP), small[1])
    assert (tall[0], tall[1] - small[1]) == (small[0], 2 * (TILE + CAPTION + GAP))


def test_example_queries_are_half_failures_seeded():
    labels = np.repeat(np.arange(4), 5)  # 20 queries
    neighbours = np.roll(np.arange(20), -1)[:, None]  # each query's neighbour is the next item
    wrong = {4, 9, 14, 19}  # the last of each class meets the next class
    chosen = example_queries(labels, neighbours, seed=1)
    assert len(chosen) == 8 and set(chosen[:4]) == wrong and not set(chosen[4:]) & wrong
    assert list(chosen) == list(example_queries(labels, neighbours, seed=1))
    assert list(chosen) != list(example_queries(labels, neighbours, seed=2))  # other correct ones
    assert set(example_queries(labels, neighbours, seed=1, count=2)) <= set(range(20))
    all_right = np.where(np.arange(20) % 5 == 4, np.arange(20) - 1, np.arange(20) + 1)[:, None]
    assert len(example_queries(labels, all_right, seed=0)) == 8  # no failure: every row is a success
    singleton = np.array([0, 0, 1])  # class 1 has nothing to find: never shown as a failure
    assert list(example_queries(singleton, np.array([[1], [0], [0]]), seed=0)) == [0, 1]


def test_a_query_label_is_its_folder_name_when_the_index_has_it(tmp_path):
    assert query_label(tmp_path / "class4" / "3.png", {"class4", "class5"}) == "class4"
    assert query_label(tmp_path / "holiday" / "3.png", {"class4"}) is None
    assert query_label(np.zeros((4, 4), dtype=np.uint8), {"class4"}) is None


def test_search_show_draws_a_row_per_query(cli, index_dir, trained, tmp_path):
    unknown = tmp_path / "unsorted" / "photo.png"
    unknown.parent.mkdir()
    shutil.copy(trained.data / "class1" / "2.png", unknown)
    out = tmp_path / "results.png"
    result = cli("search", index_dir, trained.data / "class4" / "3.png", unknown, "-k", "3", "--show", out)
    assert result.exit_code == 0, str(result)
    assert f"drew the results in {out}" in result.output and "class4" in result.output  # the table as well
    picture = pixels(out)
    layout = layout_of(picture, rows=2, columns=4)
    assert picture.shape[1] == layout.width
    assert_colour(frame_colour(picture, layout, 0, 0), QUERY)
    assert_colour(frame_colour(picture, layout, 0, 1), GREEN)  # the query itself is in the gallery
    for column in (1, 2, 3):
        assert_colour(frame_colour(picture, layout, 1, column), GREY)  # "unsorted" is not a label


def test_search_show_refuses_a_bad_output_before_searching(cli, index_dir, trained, tmp_path):
    query = trained.data / "class4" / "3.png"
    assert_one_error(cli("search", index_dir, query, "--show", tmp_path), "--show", "is a folder", code=2)
    missing = tmp_path / "nowhere" / "deeper" / "x.png"
    (tmp_path / "nowhere").write_text("a file")
    assert_one_error(cli("search", index_dir, query, "--show", missing), "--show", code=2)
    assert_one_error(
        cli("search", index_dir, query, "--show", tmp_path / "r.gif"), "--show", "no picture format", code=2
    )
    assert not (tmp_path / "r.gif").exists()


def test_a_gallery_image_gone_since_indexing_is_drawn_blank(tmp_path, caplog):
    class GoneIndex:
        location, count = str(tmp_path / "index"), 2
        manifest = Manifest(["/gone/a.png", "/gone/b.png"], ["cat", "dog"])

        def image(self, row: int, min_side: int | None = None) -> Image.Image:
            if row == 1:
                raise DataError(f"gallery image {self.manifest.paths[row]}: unreadable (FileNotFoundError)")
            return Image.new("RGB", (8, 8), (255, 255, 0))

    query = tmp_path / "cat" / "q.png"
    query.parent.mkdir()
    Image.new("RGB", (8, 8)).save(query)
    hits = [Hit(1, 0, "/gone/a.png", "cat", 0.9), Hit(2, 1, "/gone/b.png", "dog", 0.8)]
    with caplog.at_level(logging.WARNING, logger="edgedml"):
        write_search_grid([QueryResult(str(query), hits)], GoneIndex(), [query], tmp_path / "r.png")
    assert any("/gone/b.png" in r.getMessage() for r in caplog.records)
    picture = pixels(tmp_path / "r.png")
    layout = layout_of(picture, rows=1, columns=3)
    assert_colour(frame_colour(picture, layout, 0, 1), GREEN)
    assert_colour(frame_colour(picture, layout, 0, 2), RED)
    left, top, right, bottom = layout.tile_box(0, 2)
    assert_colour(picture[(top + bottom) // 2, (left + right) // 2], BACKDROP)  # blank, not a crash


# ---- evaluation -----------------------------------------------------------------------------------


def test_eval_draws_examples_and_an_embedding_plot(cli, trained, tmp_path):
    examples, plot = tmp_path / "examples.png", tmp_path / "plot.png"
    result = cli("eval", trained.run, "--examples", examples, "--embedding-plot", plot, "--projection", "tsne")
    assert result.exit_code == 0, str(result)
    assert f"drew {examples}" in result.output and f"drew {plot}" in result.output
    grid = pixels(examples)
    layout = layout_of(grid, rows=8, columns=6)  # 30 test images: 8 queries, top 5 each
    assert grid.shape[1] == layout.width
    for row in range(8):
        assert_colour(frame_colour(grid, layout, row, 0), QUERY)
        assert any(np.abs(frame_colour(grid, layout, row, 1) - colour).max() <= 2 for colour in (GREEN, RED))
    height, width = pixels(plot).shape[:2]
    assert 600 <= width <= 1200 and 450 <= height <= 900


def test_eval_json_stays_json_with_pictures(cli, trained, tmp_path):
    import json

    result = cli("eval", trained.run, "--json", "--embedding-plot", tmp_path / "plot.svg")
    assert result.exit_code == 0, str(result)
    assert json.loads(result.stdout)["num_queries"] == 30
    assert (tmp_path / "plot.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--examples", "{tmp}"], ["--examples", "is a folder"]),
        (["--embedding-plot", "{tmp}/missing/plot.png", "--projection", "umap"], ["--projection 'umap'"]),
        (["--projection", "tsne"], ["--projection tsne applies to --embedding-plot"]),
        (["--examples", "{tmp}/same.png", "--embedding-plot", "{tmp}/same.png"], ["both name"]),
        (["--examples", "{tmp}/examples"], ["--examples", "no picture format"]),
    ],
)
def test_eval_picture_options_are_checked_before_any_work(cli, trained, tmp_path, options, fragments):
    result = cli("eval", trained.run, *[option.format(tmp=tmp_path) for option in options])
    assert_one_error(result, *fragments, code=2)
    assert "Recall@1" not in result.output  # refused before the evaluation


def test_the_embedding_plot_subsamples_above_its_limit_and_says_so():
    rng = np.random.default_rng(0)
    labels = [f"class{c:02d}" for c in rng.integers(0, 25, 200)]
    embedded = split_of(labels, rng.normal(size=(200, 8)))
    figure = embedding_figure(embedded, max_points=50)
    title = figure.axes[0].get_title()
    assert "a seeded random 50 of its 200 images" in title and "no legend above 20 classes" in title
    assert not figure.legends
    assert len(figure.axes[0].collections[0].get_offsets()) == 50
    few = embedding_figure(split_of(labels[:30], rng.normal(size=(30, 8))), projection="pca")
    assert "seeded random" not in few.axes[0].get_title()
    assert few.axes[0].get_xlabel().startswith("PC 1 (")


def test_eval_examples_can_draw_other_neighbour_lists(tmp_path):
    labels = ["a"] * 4 + ["b"] * 4
    embedded = split_of(labels, np.random.default_rng(1).normal(size=(8, 4)))
    reranked = np.array([[(i + j) % 8 for j in range(1, 4)] for i in range(8)])
    out = write_eval_examples(embedded, reranked, tmp_path / "reranked.jpg", top_k=2)
    with Image.open(out) as image:
        assert image.format == "JPEG" and image.width == GridLayout(1, 3).width
    with pytest.raises(ValueError, match="neighbours"):
        write_eval_examples(embedded, reranked[:4], tmp_path / "bad.png")


# ---- training curves ------------------------------------------------------------------------------


def test_every_run_has_its_curves(trained):
    curves = trained.run / "curves.png"
    with Image.open(curves) as image:
        assert image.format == "PNG" and 800 <= image.width <= 1200 and 200 <= image.height <= 400
    points = curve_points(read_jsonl(trained.run / "metrics.jsonl"))
    for key in ("loss", "lr", "val_recall_at_1", "val_map_at_r"):
        assert points[key][0] == [1, 2], key  # one point per epoch of the 2-epoch run


def test_curve_points_skip_what_a_record_lacks():
    records = [
        {"epoch": 1, "loss": 0.5, "lr": 1e-3},
        {"epoch": 2, "loss": 0.4, "lr": 5e-4, "val_recall_at_1": 0.7, "val_map_at_r": float("nan")},
    ]
    points = curve_points(records)
    assert points["loss"] == ([1, 2], [0.5, 0.4])
    assert points["val_recall_at_1"] == ([2], [0.7]) and points["val_map_at_r"] == ([], [])


def test_curves_are_redrawn_after_every_epoch_and_on_resume(cli, run_copy, monkeypatch):
    drawn: list[list[int]] = []
    write = CurvesFigure.write

    def recording(self, records, path):
        drawn.append([record["epoch"] for record in records])
        write(self, records, path)

    monkeypatch.setattr(CurvesFigure, "write", recording)
    before = (run_copy / "curves.png").stat().st_mtime_ns
    result = cli("train", "--resume", run_copy, "--epochs", "4")
    assert result.exit_code == 0, str(result)
    assert drawn == [[1, 2, 3], [1, 2, 3, 4]]  # the epochs before the resume are read back from metrics.jsonl
    assert (run_copy / "curves.png").stat().st_mtime_ns > before
    assert not list(run_copy.glob(".curves.png.*"))  # no temporary file left
    assert curve_points(read_jsonl(run_copy / "metrics.jsonl"))["loss"][0] == [1, 2, 3, 4]


def test_a_picture_that_cannot_be_drawn_never_stops_training(cli, run_copy, monkeypatch, caplog):
    def broken(self, records, path):
        raise RuntimeError("no backend")

    monkeypatch.setattr(CurvesFigure, "write", broken)
    with caplog.at_level(logging.WARNING, logger="edgedml"):
        result = cli("train", "--resume", run_copy, "--epochs", "4")
    assert result.exit_code == 0, str(result)
    warnings = [r.getMessage() for r in caplog.records if "curves.png" in r.getMessage()]
    assert len(warnings) == 1 and "no backend" in warnings[0] and "training goes on" in warnings[0]
    assert len(read_jsonl(run_copy / "metrics.jsonl")) == 4
