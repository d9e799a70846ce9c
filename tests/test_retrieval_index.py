"""`edgedml index` / `edgedml search`: round trip, append, resume after Ctrl-C, and each bad input."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgedml.errors import ConfigError, DataError, ModelError
from edgedml.progress import Progress
from edgedml.retrieval import build_index, search
from edgedml.retrieval.faiss_store import META_FILE, PARTIAL_DIR, FaissIndex


def export_fp32(run: Path, out: Path, **options) -> Path:
    from edgedml.export.onnx import export_onnx

    return export_onnx(run, out=out, evaluate=False, **options).files["fp32"].path


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory) -> Path:
    return export_fp32(trained.run, tmp_path_factory.mktemp("export") / "model.onnx")


def write_manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((str(p), label) for p, label in rows)
    return path


def folder_rows(root: Path, classes: range) -> list[tuple[Path, str]]:
    return [
        (p, f"class{c}") for c in classes for p in sorted((root / f"class{c}").glob("*.png"), key=lambda p: int(p.stem))
    ]


def snapshot(index_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in index_dir.iterdir() if p.is_file()}


def test_cli_index_then_search_round_trip(cli, model, trained, tmp_path):
    out = tmp_path / "index"
    result = cli("index", model, "--gallery", trained.data, "--out", out)
    assert result.exit_code == 0, str(result)
    assert "indexed 60 new image(s)" in result.output and "flat index" in result.output
    meta = json.loads((out / META_FILE).read_text())
    assert meta["count"] == 60 and meta["dim"] == 16 and meta["format_version"] == 1
    assert meta["model"]["info"]["dim"] == 16 and len(meta["model"]["sha256"]) == 64
    with (out / meta["files"]["manifest"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["id"]) for r in rows] == list(range(60))
    assert sum(r["label"] == "class4" for r in rows) == 10
    query = trained.data / "class4" / "3.png"
    found = cli("search", out, query, "--top-k", "5", "--json")
    assert found.exit_code == 0, str(found)
    hits = json.loads(found.stdout)[0]["hits"]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["path"] == str(query.resolve()) and hits[0]["label"] == "class4"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    # the scores are the cosine similarities of the exported model's embeddings
    index = FaissIndex.open(out)
    vectors = index.index.reconstruct_n(0, 60)
    row = rows[[r["path"] for r in rows].index(hits[1]["path"])]
    assert float(vectors[int(row["id"])] @ vectors[hits[0]["id"]]) == pytest.approx(hits[1]["score"], abs=1e-5)
    table = cli("search", out, query, "-k", "2")
    assert table.exit_code == 0 and "class4" in table.output and "1.0000" in table.output


def test_test_split_indexes_the_unseen_classes(model, trained, tmp_path):
    summary = build_index(model, str(trained.data), tmp_path / "index", split="test")
    index = FaissIndex.open(tmp_path / "index")
    assert summary.count == 30 and sorted(set(index.manifest.labels)) == ["class3", "class4", "class5"]


def test_append_equals_a_fresh_build(model, trained, tmp_path):
    first = write_manifest(tmp_path / "first.csv", folder_rows(trained.data, range(3)))
    appended, fresh = tmp_path / "appended", tmp_path / "fresh"
    assert build_index(model, str(first), appended).count == 30
    summary = build_index(model, str(trained.data), appended, mode="append")
    assert (summary.added, summary.count) == (30, 60)  # the first 30 were not embedded again
    build_index(model, str(trained.data), fresh)
    a, f = FaissIndex.open(appended), FaissIndex.open(fresh)
    assert a.manifest.paths == f.manifest.paths and a.manifest.labels == f.manifest.labels
    np.testing.assert_array_equal(a.index.reconstruct_n(0, 60), f.index.reconstruct_n(0, 60))
    queries = [trained.data / "class1" / "0.png", trained.data / "class5" / "9.png"]
    for got, expected in zip(search(appended, queries, top_k=8), search(fresh, queries, top_k=8), strict=True):
        assert [(h.id, h.path) for h in got.hits] == [(h.id, h.path) for h in expected.hits]
    nothing_new = build_index(model, str(trained.data), appended, mode="append")
    assert (nothing_new.added, nothing_new.count) == (0, 60)
    assert json.loads((appended / META_FILE).read_text())["generation"] == 2  # nothing rewritten


def test_append_with_another_model_is_refused(model, trained, tmp_path):
    out = tmp_path / "index"
    build_index(model, str(trained.data), out)
    before = snapshot(out)
    other = export_fp32(trained.run, tmp_path / "fixed.onnx", batch=4)  # same weights, another file
    with pytest.raises(ModelError, match="not the model that built the index"):
        build_index(other, str(trained.data), out, mode="append")
    assert snapshot(out) == before


def test_interrupted_build_keeps_the_old_index_and_resumes(model, trained, tmp_path):
    out = tmp_path / "index"
    first = write_manifest(tmp_path / "first.csv", folder_rows(trained.data, range(2)))
    build_index(model, str(first), out)
    before = snapshot(out)
    batches = []

    class InterruptOnThirdBatch(Progress):
        def advance(self, count=1, status=None):
            batches.append(count)
            if len(batches) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(
            model,
            str(trained.data),
            out,
            mode="overwrite",
            batch_size=8,
            chunk_size=16,
            progress=InterruptOnThirdBatch(),
        )
    assert snapshot(out) == before and FaissIndex.open(out).count == 20  # the previous index, untouched
    assert len(list((out / PARTIAL_DIR).glob("chunk-*.npz"))) == 1  # the first chunk of 16 images was kept
    starts = []

    class RecordStart(Progress):
        def stage(self, description, total=None, done=0):
            starts.append((total, done))

    resumed = build_index(
        model, str(trained.data), out, mode="overwrite", batch_size=8, chunk_size=16, progress=RecordStart()
    )
    assert starts == [(60, 16)] and resumed.resumed == 16 and resumed.count == 60
    assert not (out / PARTIAL_DIR).exists() and sorted(p.name for p in out.iterdir()) == [
        "index.2.faiss",
        "index.json",
        "manifest.2.csv",
    ]
    build_index(model, str(trained.data), tmp_path / "fresh")
    np.testing.assert_allclose(
        FaissIndex.open(out).index.reconstruct_n(0, 60),
        FaissIndex.open(tmp_path / "fresh").index.reconstruct_n(0, 60),
        atol=1e-6,
    )


def test_cli_interrupt_says_how_to_resume(cli, model, trained, tmp_path, monkeypatch):
    from edgedml.retrieval import index as index_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "build_index", interrupted)
    result = cli("index", model, "--gallery", trained.data, "--out", tmp_path / "index")
    assert result.exit_code == 130 and "run the same command again to resume" in result.output


def test_search_with_a_moved_model_and_with_a_different_one(
    cli, model, trained, tmp_path, tiny_train_options, set_option
):
    out = tmp_path / "index"
    build_index(model, str(trained.data), out)
    moved = tmp_path / "moved.onnx"
    shutil.copy(model, moved)
    query = trained.data / "class2" / "5.png"
    assert search(out, [query], model=moved)[0].hits[0].path == str(query.resolve())
    assert build_index(trained.run, str(trained.data), tmp_path / "torch").count == 60  # PyTorch weights, same run
    assert search(tmp_path / "torch", [query], model=model)[0].hits[0].path == str(
        query.resolve()
    )  # same run: accepted
    other_run = tmp_path / "run8"
    trainedd = cli("train", "--data", trained.data, "--out", other_run, *set_option(tiny_train_options, "--dim", "8"))
    assert trainedd.exit_code == 0, str(trainedd)
    result = cli("search", out, query, "--model", other_run)
    assert result.exit_code != 0 and len(result.error_lines) == 1
    assert "not the model that built the index" in result.output and "dim 8 vs 16" in result.output


def test_unreadable_query_image_is_one_line_naming_it(cli, model, trained, tmp_path):
    out = tmp_path / "index"
    build_index(model, str(trained.data), out)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    for bad in (broken, tmp_path / "missing.png"):
        result = cli("search", out, trained.data / "class0" / "0.png", bad)
        assert result.exit_code == 1 and result.error_lines == [
            f"error: query image {bad}: {'missing' if 'missing' in bad.name else 'unreadable (UnidentifiedImageError)'}"
        ]


def test_bad_galleries_leave_the_existing_index_alone(cli, model, trained, tmp_path):
    out = tmp_path / "index"
    build_index(model, str(trained.data), out)
    before = snapshot(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt" / "a"
    corrupt.mkdir(parents=True)
    for i in range(3):
        (corrupt / f"{i}.png").write_bytes(b"\x89PNG truncated")
    cases = {
        empty: "no class folders with images",
        corrupt.parent: "none of its 3 image(s) could be read",
    }
    for gallery, message in cases.items():
        result = cli("index", model, "--gallery", gallery, "--out", out, "--overwrite")
        assert result.exit_code != 0 and len(result.error_lines) == 1 and message in result.output, str(result)
        assert snapshot(out) == before
    again = cli("index", model, "--gallery", trained.data, "--out", out)
    assert again.exit_code == 2 and "already holds an index of 60 images" in again.output and "--append" in again.output
    small_ivf = cli("index", model, "--gallery", trained.data, "--out", tmp_path / "ivf", "--index-type", "ivf")
    assert small_ivf.exit_code == 2 and "needs at least" in small_ivf.output and "--index-type flat" in small_ivf.output
    assert not (tmp_path / "ivf" / META_FILE).exists()
    assert snapshot(out) == before


def test_an_index_from_a_newer_format_is_refused(cli, model, trained, tmp_path):
    out = tmp_path / "index"
    build_index(model, str(trained.data), out)
    meta = json.loads((out / META_FILE).read_text())
    meta["format_version"], meta["edgedml_version"] = 99, "9.0.0"
    (out / META_FILE).write_text(json.dumps(meta))
    before = snapshot(out)
    result = cli("search", out, trained.data / "class0" / "0.png")
    assert result.exit_code == 1 and "index format 99 (written by edgedml 9.0.0) is newer" in result.output
    assert "upgrade edgedml" in result.output
    appended = cli("index", model, "--gallery", trained.data, "--out", out, "--append")
    assert appended.exit_code == 1 and "is newer" in appended.output
    assert snapshot(out) == before
    with pytest.raises(DataError, match="not an index directory"):
        FaissIndex.open(tmp_path)


def test_option_errors(model, trained, tmp_path, cli):
    both = cli("index", model, "--gallery", trained.data, "--out", tmp_path / "a", "--append", "--overwrite")
    assert both.exit_code == 2 and "exclude each other" in both.output
    with pytest.raises(ConfigError, match="index mode 'replace' is not one of new, append, overwrite"):
        build_index(model, str(trained.data), tmp_path / "a", mode="replace")
    with pytest.raises(ConfigError, match="--split 'everything'"):
        build_index(model, str(trained.data), tmp_path / "b", split="everything")
    with pytest.raises(ConfigError, match="--nprobe applies to ivf"):
        build_index(model, str(trained.data), tmp_path / "c", nprobe=4)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_hnsw_build_append_and_search(cli, model, trained, tmp_path):
    first = write_manifest(tmp_path / "first.csv", folder_rows(trained.data, range(3)))
    out = tmp_path / "hnsw"
    built = cli("index", model, "--gallery", first, "--out", out, "--index-type", "hnsw", "--hnsw-m", "8")
    assert built.exit_code == 0, str(built)
    assert "hnsw (M 8, efConstruction 100, ef 64) index" in built.output
    summary = build_index(model, str(trained.data), out, mode="append", ef_search=16)
    assert (summary.added, summary.count, summary.index["ef_search"], summary.index["hnsw_m"]) == (30, 60, 16, 8)
    index = FaissIndex.open(out)
    assert index.generation == 2 and index.index.hnsw.efConstruction == 100
    queries = [trained.data / "class1" / "0.png", trained.data / "class5" / "9.png"]
    build_index(model, str(trained.data), tmp_path / "flat")
    for got, expected in zip(search(out, queries, top_k=5), search(tmp_path / "flat", queries, top_k=5), strict=True):
        assert [h.path for h in got.hits] == [h.path for h in expected.hits]  # 60 rows: the graph finds them all
    assert search(out, queries, top_k=5, rerank="kreciprocal")[0].hits[0].path == str(queries[0].resolve())
    with pytest.raises(ConfigError, match="--nprobe applies to ivf and ivfpq indexes; this one is hnsw"):
        search(out, queries, nprobe=4)
    with pytest.raises(ConfigError, match="fixed when the index is built"):
        build_index(model, str(trained.data), out, mode="append", hnsw_m=16)
