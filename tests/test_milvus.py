"""The Milvus backend on Milvus Lite (a file in tmp_path, no server): the same `index`, `search`, `eval` and
`serve` as FAISS, with results equal to FAISS flat for exact search, append, resume, and each refusal."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgedml.errors import ConfigError, DataError, ModelError
from edgedml.progress import Progress
from edgedml.retrieval import Searcher, build_index, open_index
from edgedml.retrieval.evaluate import evaluate_model
from edgedml.retrieval.milvus_store import INDEX_PROPERTY, MilvusIndex, connect
from edgedml.retrieval.synthetic import recall_against_exact


def export_fp32(run: Path, out: Path, **options) -> Path:
    from edgedml.export.onnx import export_onnx

    return export_onnx(run, out=out, evaluate=False, **options).files["fp32"].path


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory) -> Path:
    return export_fp32(trained.run, tmp_path_factory.mktemp("milvus-export") / "model.onnx")


@pytest.fixture(scope="module")
def faiss_flat(model, trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("milvus-faiss") / "index"
    build_index(model, str(trained.data), out)
    return out


@pytest.fixture(scope="module")
def milvus_flat(model, trained, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("milvus-flat") / "gallery.db"
    build_index(model, str(trained.data), db)
    return db


def write_manifest(path: Path, root: Path, classes: range) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        rows = csv.writer(handle)
        rows.writerow(["path", "label"])
        rows.writerows(
            (p, f"class{c}")
            for c in classes
            for p in sorted((root / f"class{c}").glob("*.png"), key=lambda p: int(p.stem))
        )
    return path


def queries_of(index_dir: Path) -> np.ndarray:
    faiss_index = open_index(index_dir)
    return faiss_index.vectors(np.arange(0, faiss_index.count, 3))


def physical_collections(db: Path) -> list[str]:
    return sorted(connect(str(db), must_exist=True).list_collections())


# --------------------------------------------------------------------------------------------- build and search


def test_flat_search_equals_faiss_flat(model, trained, faiss_flat, milvus_flat):
    faiss_index, milvus_index = open_index(faiss_flat), open_index(milvus_flat)
    assert isinstance(milvus_index, MilvusIndex)
    assert (milvus_index.count, milvus_index.dim, milvus_index.generation) == (60, 16, 1)
    assert milvus_index.meta["model"] == faiss_index.meta["model"] and milvus_index.params.type == "flat"
    assert milvus_index.manifest == faiss_index.manifest  # the same ids for the same paths
    queries = queries_of(faiss_flat)
    expected_scores, expected_ids = faiss_index.search(queries, 10)
    scores, ids = milvus_index.search(queries, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(milvus_index.vectors(ids[:, 0]), faiss_index.vectors(ids[:, 0]), atol=1e-6)
    images = [trained.data / "class1" / "0.png", trained.data / "class5" / "9.png"]
    for method in ("none", "kreciprocal"):
        got = Searcher.open(milvus_flat).search(images, top_k=8, rerank=method)
        wanted = Searcher.open(faiss_flat).search(images, top_k=8, rerank=method)
        assert [[(h.id, h.path) for h in r.hits] for r in got] == [[(h.id, h.path) for h in r.hits] for r in wanted]


def test_append_inserts_only_new_paths(model, trained, faiss_flat, tmp_path):
    db = tmp_path / "gallery.db"
    first = build_index(model, str(write_manifest(tmp_path / "first.csv", trained.data, range(3))), db)
    assert (first.count, first.backend, first.collection) == (30, "milvus", "gallery")
    appended = build_index(model, str(trained.data), db, mode="append")
    assert (appended.added, appended.count) == (30, 60)
    index = open_index(db)
    assert index.generation == 2 and index.meta["partitions"] == ["_default", "g2"]
    assert sorted(index.manifest.paths) == sorted(open_index(faiss_flat).manifest.paths)
    nothing_new = build_index(model, str(trained.data), db, mode="append")
    assert (nothing_new.added, nothing_new.count, open_index(db).generation) == (0, 60, 2)
    with pytest.raises(ConfigError, match="already holds an index of 60 images"):
        build_index(model, str(trained.data), db)


class InterruptOnThirdBatch(Progress):
    def __init__(self):
        self.batches = 0

    def advance(self, count=1, status=None):
        self.batches += 1
        if self.batches == 3:
            raise KeyboardInterrupt


class RecordStart(Progress):
    def __init__(self):
        self.starts = []

    def stage(self, description, total=None, done=0):
        self.starts.append((total, done))


def test_interrupted_build_and_append_leave_the_previous_index_searchable_and_resume(model, trained, tmp_path):
    db = tmp_path / "gallery.db"
    build_index(model, str(write_manifest(tmp_path / "two.csv", trained.data, range(2))), db)
    options = dict(batch_size=8, chunk_size=16)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, str(trained.data), db, mode="overwrite", progress=InterruptOnThirdBatch(), **options)
    previous = open_index(db)
    assert (previous.count, previous.generation) == (20, 1)  # the alias still names the old collection
    assert previous.search(previous.vectors(np.array([4])), 1)[1][0, 0] == 4
    assert physical_collections(db) == ["gallery__1", "gallery__2"]  # the new one holds the first chunk
    record = RecordStart()
    resumed = build_index(model, str(trained.data), db, mode="overwrite", progress=record, **options)
    assert record.starts == [(60, 16)] and resumed.resumed == 16 and resumed.count == 60
    assert open_index(db).generation == 2 and physical_collections(db) == ["gallery__2"]  # the old one dropped
    # an interrupted append: invisible until committed, then resumed into the same partition
    db = tmp_path / "append.db"
    build_index(model, str(write_manifest(tmp_path / "one.csv", trained.data, range(1))), db)
    with pytest.raises(KeyboardInterrupt):
        build_index(model, str(trained.data), db, mode="append", progress=InterruptOnThirdBatch(), **options)
    assert (open_index(db).count, open_index(db).generation) == (10, 1)
    record = RecordStart()
    appended = build_index(model, str(trained.data), db, mode="append", progress=record, **options)
    assert record.starts == [(50, 16)] and (appended.resumed, appended.count) == (16, 60)
    index = open_index(db)
    assert index.generation == 2 and index.meta["partitions"] == ["_default", "g2"]
    assert len(set(index.manifest.paths)) == 60


def test_another_model_is_refused(model, trained, milvus_flat, tmp_path):
    other = export_fp32(trained.run, tmp_path / "fixed.onnx", batch=4)  # same weights, another file
    db = tmp_path / "gallery.db"
    build_index(model, str(write_manifest(tmp_path / "one.csv", trained.data, range(1))), db)
    with pytest.raises(ModelError, match="not the model that built the index"):
        build_index(other, str(trained.data), db, mode="append")
    assert (open_index(db).count, physical_collections(db)) == (10, ["gallery__1"])
    # a collection whose description names another model (sha256, dimension): searching it with this one is refused
    index = open_index(db)
    foreign = {**index.meta, "model": {**index.meta["model"], "sha256": "0" * 64}}
    foreign["model"]["info"] = {**foreign["model"]["info"], "dim": 32, "config_hash": "another-run"}
    index.client.alter_collection_properties(index.physical, properties={INDEX_PROPERTY: json.dumps(foreign)})
    with pytest.raises(ModelError, match="dim 16 vs 32"):
        Searcher.open(db, model)


# --------------------------------------------------------------------------------------------- index types


@pytest.fixture(scope="module")
def larger_gallery(make_image_folder, tmp_path_factory) -> Path:
    """200 images: enough to train IVF with 4 cells."""
    return make_image_folder(tmp_path_factory.mktemp("milvus-larger") / "images", classes=4, per_class=50, seed=3)


@pytest.mark.parametrize("index_type, options", [("ivf", {"nlist": 4, "nprobe": 2}), ("hnsw", {"hnsw_m": 8})])
def test_ivf_and_hnsw_on_both_backends_find_what_flat_finds(model, larger_gallery, tmp_path, index_type, options):
    flat = tmp_path / "flat"
    build_index(model, str(larger_gallery), flat)
    exact = open_index(flat)
    queries = exact.vectors(np.arange(0, 200, 5))
    _, expected = exact.search(queries, 10)
    for location in (tmp_path / index_type, tmp_path / f"{index_type}.db"):
        summary = build_index(model, str(larger_gallery), location, index_type=index_type, **options)
        index = open_index(location)
        assert index.params.type == index_type and index.params.to_dict() == summary.index
        _, found = index.search(queries, 10)
        assert recall_against_exact(found, expected) >= 0.9, location
    described = connect(str(tmp_path / f"{index_type}.db"), must_exist=True).describe_index("gallery__1", "embedding")
    assert described["index_type"] == {"ivf": "IVF_FLAT", "hnsw": "HNSW"}[index_type]
    built = {"ivf": {"nlist": 4}, "hnsw": {"M": 8, "efConstruction": 100}}[index_type]
    assert {key: int(value) for key, value in described["params"].items()} == built  # what Milvus Lite builds


def test_ivfpq_on_milvus_lite_is_refused_up_front(model, trained, tmp_path):
    db = tmp_path / "gallery.db"
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"Milvus Lite .* has no IVF_PQ index") as refused:
        build_index(model, str(trained.data), db, index_type="ivfpq")
    assert "Milvus server" in refused.value.hint and time.perf_counter() - started < 5
    assert physical_collections(db) == []


# --------------------------------------------------------------------------------------------- errors


def assert_one_line(result, *fragments: str, code: int) -> None:
    assert result.exit_code == code, str(result)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) <= 2, result.output  # the error and its hint
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_unreachable_uri_is_one_line(cli, model, trained):
    result = cli("index", model, "--gallery", trained.data, "--uri", "http://127.0.0.1:1")
    assert_one_line(result, "--uri http://127.0.0.1:1", "no Milvus answers there", code=2)
    searched = cli("search", "http://127.0.0.1:1", trained.data / "class0" / "0.png")
    assert_one_line(searched, "no Milvus answers there", code=2)


def test_a_collection_of_another_schema_is_one_line(cli, model, trained, tmp_path):
    from pymilvus import DataType, MilvusClient

    db = tmp_path / "other.db"
    client = connect(str(db), must_exist=False)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=16)
    client.create_collection("gallery", schema=schema)
    client.create_collection("theirs__1", schema=schema)
    client.create_alias("theirs__1", "theirs")
    result = cli("index", model, "--gallery", trained.data, "--uri", db)
    assert_one_line(result, "--collection gallery", "a collection edgedml did not write", code=2)
    searched = cli("search", db, trained.data / "class0" / "0.png", "--collection", "theirs")
    assert_one_line(searched, "--collection theirs", "another schema (pk INT64, vector FLOAT_VECTOR", code=2)
    missing = cli("search", tmp_path / "none.db", trained.data / "class0" / "0.png")
    assert_one_line(missing, "no Milvus Lite database there", code=1)
    with pytest.raises(DataError, match="no such index"):
        open_index(db, collection="absent")


def test_cli_option_errors(cli, model, trained, tmp_path):
    no_uri = cli("index", model, "--gallery", trained.data, "--backend", "milvus")
    assert_one_line(no_uri, "--backend milvus needs --uri", code=2)
    both = cli("index", model, "--gallery", trained.data, "--out", tmp_path / "a", "--uri", tmp_path / "a.db")
    assert_one_line(both, "exclude each other", code=2)
    ef = cli("index", model, "--gallery", trained.data, "--uri", tmp_path / "b.db", "--ef-search", "32")
    assert_one_line(ef, "--ef-search applies to hnsw indexes, not flat", code=2)
    collection = cli("index", model, "--gallery", trained.data, "--out", tmp_path / "c", "--collection", "x")
    assert_one_line(collection, "--collection applies to Milvus indexes", code=2)
    assert not any((tmp_path / name).exists() for name in ("a", "c"))


# --------------------------------------------------------------------------------------------- CLI


def test_cli_index_search_and_eval_equal_faiss(cli, model, trained, faiss_flat, tmp_path):
    db = tmp_path / "cli.db"
    built = cli("index", model, "--gallery", trained.data, "--backend", "milvus", "--uri", db, "--collection", "pets")
    assert built.exit_code == 0, str(built)
    assert "indexed 60 new image(s)" in built.output and "flat index" in built.output
    assert f"next: edgedml search {db} --collection pets" in built.output
    query = trained.data / "class4" / "3.png"
    found = cli("search", db, query, "--collection", "pets", "-k", "6", "--json")
    expected = cli("search", faiss_flat, query, "-k", "6", "--json")
    assert found.exit_code == 0 and expected.exit_code == 0, str(found)
    hits, wanted = json.loads(found.stdout)[0]["hits"], json.loads(expected.stdout)[0]["hits"]
    assert [(h["id"], h["path"]) for h in hits] == [(h["id"], h["path"]) for h in wanted]
    assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in wanted], abs=1e-5)
    on_milvus = cli("eval", model, "--backend", "milvus", "--json")
    assert on_milvus.exit_code == 0, str(on_milvus)
    metrics, reference = json.loads(on_milvus.stdout), evaluate_model(model).to_dict()
    for key in ("map_at_r", "r_precision"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6)
    assert metrics["recall_at_k"] == pytest.approx(reference["recall_at_k"], abs=1e-6)
    wrong = cli("eval", model, "--uri", tmp_path / "x.db")
    assert_one_line(wrong, "--uri applies to --backend milvus", code=2)


# --------------------------------------------------------------------------------------------- serve


def wait_for(read, done, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_serve_a_milvus_index(model, trained, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from edgedml.serve.app import create_app
    from edgedml.serve.service import SearchService
    from edgedml.serve.settings import ServeSettings

    db = tmp_path / "served.db"
    build_index(model, str(write_manifest(tmp_path / "three.csv", trained.data, range(3))), db)
    query = ("3.png", (trained.data / "class4" / "3.png").read_bytes())
    service = SearchService.open(ServeSettings(db, allow_writes=True).check())
    with TestClient(create_app(service)) as client:
        assert client.get("/health").json()["count"] == 30
        build_index(model, str(trained.data), db, mode="append")  # from outside the server
        health = wait_for(lambda: client.get("/health").json(), lambda h: h["generation"] == 2)
        assert health["count"] == 60
        answer = client.post("/search", files=[("images", (*query, "image/png"))], data={"top_k": "3"}).json()
        hit = answer["results"][0]["hits"][0]
        assert answer["count"] == 60 and hit["label"] == "class4" and hit["score"] == pytest.approx(1.0, abs=1e-5)
        assert client.get(f"/thumbnail/{hit['id']}").status_code == 200
        added = client.post("/index", files=[("images", (*query, "image/png"))], data={"label": "fours"}).json()
        assert (added["generation"], added["count"], added["added"]) == (3, 61, 1)
        assert len(list((tmp_path / "served.db.uploads" / "fours").glob("*.png"))) == 1


def test_a_database_another_process_holds_is_one_line(tmp_path):
    """Milvus Lite opens a database in one process at a time: the second is told so, in one line."""
    import subprocess
    import sys

    from edgedml.retrieval.milvus_store import close_connections

    database = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import pymilvus; pymilvus.MilvusClient({str(database)!r}); print('open', flush=True);"
            "import sys; sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ConfigError, match="another process has this Milvus Lite database open") as raised:
            connect(str(database), must_exist=True)
        assert "\n" not in raised.value.message
    finally:
        holder.communicate("", timeout=60)
    close_connections()
    assert connect(str(database), must_exist=True) is not None  # free once the other process is gone
    close_connections()
