"""`edgedml serve`: every endpoint through FastAPI's test client, auth, writes, generations picked up without a
restart (and none mixed under load), the bad-input sweep (4xx JSON, never 5xx), the CLI's option checks, and the
real command on a socket."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgedml.data.images import decode_upload
from edgedml.errors import ConfigError, DataError
from edgedml.export.runtime import OnnxRuntimeEmbedder, embed_samples, file_digest
from edgedml.retrieval import build_index
from edgedml.serve import BatchingEmbedder, ServeSettings, check_auth, gallery_names, is_loopback

fastapi = pytest.importorskip("fastapi", reason="the serve extra (pip install 'edgedml[serve]') is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from edgedml.serve.app import create_app  # noqa: E402
from edgedml.serve.service import SearchService, upload_name  # noqa: E402

QUERY = ("class4", "3.png")


# --------------------------------------------------------------------------------------------- fixtures


def export_fp32(run: Path, out: Path) -> Path:
    from edgedml.export.onnx import export_onnx

    return export_onnx(run, out=out, evaluate=False).files["fp32"].path


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory) -> Path:
    return export_fp32(trained.run, tmp_path_factory.mktemp("serve-export") / "model.onnx")


def write_manifest(path: Path, root: Path, classes: range) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        rows = csv.writer(handle)
        rows.writerow(["path", "label"])
        rows.writerows((p, f"class{c}") for c in classes for p in sorted((root / f"class{c}").glob("*.png")))
    return path


@pytest.fixture
def index_dir(model, trained, tmp_path) -> Path:
    """The 60 images of the trained run's data set, flat, generation 1."""
    build_index(model, str(trained.data), tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture
def half_index(model, trained, tmp_path) -> Path:
    """Classes 0-2 only (30 images), to append the other three to."""
    manifest = write_manifest(tmp_path / "first.csv", trained.data, range(3))
    build_index(model, str(manifest), tmp_path / "half")
    return tmp_path / "half"


def client_for(index_dir: Path, **settings) -> TestClient:
    return TestClient(create_app(SearchService.open(ServeSettings(index_dir, **settings).check())))


@pytest.fixture
def client(index_dir):
    with client_for(index_dir) as test_client:
        yield test_client


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def upload(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "application/octet-stream")) for name, data in files]


def query_file(trained) -> tuple[str, bytes]:
    return QUERY[1], (trained.data / QUERY[0] / QUERY[1]).read_bytes()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def assert_json_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------------- reads


def test_health_info_and_docs(client, model, index_dir):
    health = client.get("/health").json()
    assert health == {"status": "ok", "generation": 1, "count": 60, "stale": None}
    info = client.get("/info").json()
    assert info["model"] | {"backbone": None} == {
        "file": "model.onnx",
        "sha256": file_digest(model),
        "runtime": "onnxruntime",
        "precision": "fp32",
        "dim": 16,
        "input_size": 16,
        "batch": None,
        "backbone": None,
    }
    assert info["index"] == {
        "generation": 1,
        "count": 60,
        "dim": 16,
        "type": "flat",
        "metric": "inner_product",
        "nlist": None,
        "nprobe": None,
        "pq_m": None,
        "pq_bits": None,
        "hnsw_m": None,
        "ef_construction": None,
        "ef_search": None,
    }
    assert info["server"]["writes"] is False and info["server"]["auth"] is False and info["server"]["top_k"] == 10
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/info", "/search", "/embed", "/index", "/thumbnail/{row}"} <= set(paths)
    assert str(index_dir.parent) not in json.dumps(info)  # no device path leaks


def test_search_finds_each_query_and_names_hits_by_gallery_relative_name(client, trained, index_dir):
    other = ("0.png", (trained.data / "class1" / "0.png").read_bytes())
    response = client.post("/search", files=upload(query_file(trained), other), data={"top_k": "5"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["generation"], answer["count"], answer["top_k"], answer["rerank"]) == (1, 60, 5, "none")
    first, second = answer["results"]
    assert first["query"] == "3.png" and second["query"] == "0.png"
    assert [hit["rank"] for hit in first["hits"]] == [1, 2, 3, 4, 5]
    top = first["hits"][0]
    assert top["label"] == "class4" and top["name"] == "class4/3.png" and top["score"] == pytest.approx(1, abs=1e-5)
    assert second["hits"][0]["name"] == "class1/0.png"
    assert all(a["score"] >= b["score"] for a, b in zip(first["hits"], first["hits"][1:], strict=False))
    assert str(trained.data) not in response.text  # names, not the device's absolute paths
    default = client.post("/search", files=upload(query_file(trained))).json()
    assert len(default["results"][0]["hits"]) == 10  # the server's --top-k


@pytest.mark.parametrize("method", ["qe", "kreciprocal"])
def test_search_reranks_per_request(client, trained, method):
    response = client.post("/search", files=upload(query_file(trained)), data={"top_k": "5", "rerank": method})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["rerank"] == method and answer["results"][0]["hits"][0]["label"] == "class4"


def test_rerank_default_comes_from_the_server(index_dir, trained):
    with client_for(index_dir, rerank="qe") as qe_client:
        assert qe_client.post("/search", files=upload(query_file(trained))).json()["rerank"] == "qe"
        assert qe_client.get("/info").json()["server"]["rerank"] == "qe"


def test_embed_returns_the_models_embeddings(client, model, trained):
    path = trained.data / QUERY[0] / QUERY[1]
    response = client.post("/embed", files=upload(query_file(trained)))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["dim"] == 16 and answer["model_sha256"] == file_digest(model)
    embedding = np.array(answer["results"][0]["embedding"])
    assert answer["results"][0]["query"] == "3.png" and embedding.shape == (16,)
    from edgedml.data import Sample

    expected, _ = embed_samples(OnnxRuntimeEmbedder.on_cpu(model), [Sample(image=str(path), label="")])
    np.testing.assert_allclose(embedding, expected[0], atol=1e-5)


def test_page_and_thumbnails(client, index_dir):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "edgedml search" in page.text and "/search" in page.text and "http" not in page.text.split("<script>")[1]
    thumbnail = client.get("/thumbnail/0")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (16, 16)  # small images are never enlarged
    assert client.get("/thumbnail/0").content == thumbnail.content  # cached
    assert_json_error(client.get("/thumbnail/60"), 404, "no gallery row 60")
    assert_json_error(client.get("/thumbnail/-1"), 404, "no gallery row -1")
    assert_json_error(client.get("/thumbnail/abc"), 422, "row")
    assert_json_error(client.get("/thumbnail/..%2F..%2Fetc%2Fpasswd"), 404)
    assert_json_error(client.get("/nothing"), 404, "no route GET /nothing")


def test_thumbnail_of_a_gone_file_is_404(model, trained, tmp_path):
    gallery = tmp_path / "gallery" / "class4"
    gallery.mkdir(parents=True)
    for name in ("0.png", "1.png"):
        (gallery / name).write_bytes((trained.data / "class4" / name).read_bytes())
    build_index(model, str(gallery.parent), tmp_path / "index")
    (gallery / "1.png").unlink()
    with client_for(tmp_path / "index") as test_client:
        assert test_client.get("/thumbnail/0").status_code == 200
        assert_json_error(test_client.get("/thumbnail/1"), 404, "gallery row 1", "unreadable")


# --------------------------------------------------------------------------------------------- auth


def test_token_guards_every_route(index_dir, trained):
    with client_for(index_dir, token="s3cret-token") as test_client:
        for path in ("/", "/health", "/info", "/docs", "/openapi.json", "/thumbnail/0"):
            refused = test_client.get(path)
            assert_json_error(refused, 401, "bearer token")
            assert refused.headers["www-authenticate"] == "Bearer"
            assert test_client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert test_client.get(path, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert_json_error(test_client.post("/search", files=upload(query_file(trained))), 401)
        good = {"Authorization": "Bearer s3cret-token"}
        assert test_client.post("/search", files=upload(query_file(trained)), headers=good).status_code == 200
        assert test_client.get("/?token=s3cret-token").status_code == 200  # the page alone takes ?token=
        assert test_client.get("/health?token=s3cret-token").status_code == 401
        assert test_client.get("/?token=wrong").status_code == 401
        assert test_client.get("/info", headers=good).json()["server"]["auth"] is True


def test_settings_refuse_a_public_address_without_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    with pytest.raises(ConfigError, match="no token") as refused:
        check_auth("0.0.0.0", None, False)
    assert "--token" in refused.value.hint and "--no-auth" in refused.value.hint
    check_auth("0.0.0.0", "t", False)
    check_auth("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match="exclude each other"):
        check_auth("127.0.0.1", "t", True)
    with pytest.raises(ConfigError, match="empty"):
        check_auth("127.0.0.1", " ", False)


# --------------------------------------------------------------------------------------------- writes


def new_images(tmp_path: Path, count: int) -> list[tuple[str, bytes]]:
    """Images of a pattern the gallery does not have (checkerboards), as uploads."""
    files = []
    for i in range(count):
        board = (np.indices((16, 16)).sum(axis=0) // (2 + i % 2) % 2 * 200 + 20).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(np.stack([board, board // 2, 255 - board], axis=-1)).save(buffer, format="PNG")
        files.append((f"board{i}.png", buffer.getvalue()))
    return files


def test_writes_off_refuses_post_index(client, tmp_path, index_dir):
    response = client.post("/index", files=upload(*new_images(tmp_path, 1)), data={"label": "boards"})
    assert_json_error(response, 403, "--allow-writes")
    assert client.get("/health").json()["generation"] == 1 and not (index_dir / "uploads").exists()


def test_post_index_appends_a_new_generation(index_dir, tmp_path):
    boards = new_images(tmp_path, 2)
    with client_for(index_dir, allow_writes=True) as test_client:
        response = test_client.post("/index", files=upload(*boards), data={"label": "boards"})
        assert response.status_code == 200, response.text
        assert response.json() == {"generation": 2, "count": 62, "added": 2, "label": "boards"}
        assert test_client.get("/health").json()["generation"] == 2  # served at once
        stored = sorted((index_dir / "uploads" / "boards").glob("*.png"))
        assert len(stored) == 2 and all(re.fullmatch(r"[0-9a-f]{64}\.png", p.name) for p in stored)
        assert len(list((index_dir / "uploads").glob("batch-*.csv"))) == 1
        found = test_client.post("/search", files=upload(boards[0]), data={"top_k": "1"}).json()
        hit = found["results"][0]["hits"][0]
        assert hit["label"] == "boards" and hit["name"].startswith("uploads/boards/") and hit["id"] >= 60
        again = test_client.post("/index", files=upload(boards[0]), data={"label": "boards"}).json()
        assert (again["added"], again["count"]) == (0, 62)  # the same image with the same label: one row
        for label in ("../escape", "", ".hidden", "a/b", "x" * 65):
            bad = test_client.post("/index", files=upload(boards[0]), data={"label": label})
            assert_json_error(bad, 422, "label")
        assert_json_error(test_client.post("/index", files=upload(boards[0])), 422, "label")
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["generation"] == 2 and meta["galleries"][-1]["spec"].endswith(".csv")


def test_a_generation_written_from_outside_is_picked_up(model, trained, half_index):
    with client_for(half_index) as test_client:
        assert test_client.get("/health").json()["count"] == 30
        build_index(model, str(trained.data), half_index, mode="append")
        health = wait_for(lambda: test_client.get("/health").json(), lambda h: h["generation"] == 2)
        assert health["count"] == 60
        answer = test_client.post("/search", files=upload(query_file(trained)), data={"top_k": "1"}).json()
        assert answer["count"] == 60 and answer["results"][0]["hits"][0]["label"] == "class4"  # an appended class


def test_an_index_rebuilt_in_place_is_served_and_another_models_is_refused(model, trained, index_dir, tmp_path):
    import shutil

    with client_for(index_dir) as test_client:
        assert test_client.get("/health").json()["generation"] == 1
        shutil.rmtree(index_dir)  # a new index in the same folder: generation 1 again, 30 rows
        build_index(model, str(write_manifest(tmp_path / "three.csv", trained.data, range(3))), index_dir)
        wait_for(lambda: test_client.get("/health").json(), lambda h: h["count"] == 30)
        meta = json.loads((index_dir / "index.json").read_text())
        for kind in ("index", "manifest"):  # generation 2, as if built by another model
            shutil.copy(index_dir / meta["files"][kind], index_dir / meta["files"][kind].replace(".1.", ".2."))
        meta["generation"], meta["files"] = 2, {"index": "index.2.faiss", "manifest": "manifest.2.csv"}
        meta["model"]["sha256"], meta["model"]["info"]["config_hash"] = "0" * 64, "another-run"
        (index_dir / "index.json").write_text(json.dumps(meta))
        health = wait_for(lambda: test_client.get("/health").json(), lambda h: h["stale"] is not None)
        assert health["generation"] == 1 and "not the model that built the index" in health["stale"]
        assert test_client.post("/search", files=upload(query_file(trained))).status_code == 200


def wait_for(read, done, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), value
            return value
        time.sleep(0.05)


def test_requests_in_flight_during_an_append_all_succeed_on_one_generation(model, trained, half_index):
    """Searches run while an append commits: none fails, each answer comes from one generation whole."""
    counts = {1: 30, 2: 60}
    answers, failures = [], []
    stop = threading.Event()
    with client_for(half_index) as test_client:

        def searching() -> None:
            while not stop.is_set():
                response = test_client.post("/search", files=upload(query_file(trained)), data={"top_k": "60"})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                answers.append(response.json())

        workers = [threading.Thread(target=searching) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(0.3)
            build_index(model, str(trained.data), half_index, mode="append")
            wait_for(lambda: test_client.get("/health").json(), lambda h: h["generation"] == 2)
            seen = len(answers)
            wait_for(lambda: len(answers), lambda n: n >= seen + 4)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
    assert not failures
    generations = {answer["generation"] for answer in answers}
    assert generations == {1, 2}, generations
    for answer in answers:
        hits = answer["results"][0]["hits"]
        assert answer["count"] == counts[answer["generation"]] == len(hits)  # every row of that generation
        assert {hit["id"] for hit in hits} == set(range(answer["count"]))


# --------------------------------------------------------------------------------------------- bad input


def truncated_png(trained) -> bytes:
    data = (trained.data / "class0" / "0.png").read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "empty file": (lambda t: upload(("empty.png", b"")), {}, 400, "empty.png"),
    "truncated png": (lambda t: upload(("cut.png", truncated_png(t))), {}, 400, "cut.png"),
    "text file": (lambda t: upload(("notes.txt", b"hello, not an image\n")), {}, 415, "notes.txt"),
    "text named .png": (lambda t: upload(("fake.png", b"hello")), {}, 415, "fake.png"),
    "decompression bomb": (lambda t: upload(("bomb.png", bomb_png())), {}, 400, "decompression bomb"),
    "wrong form field": (lambda t: [("file", ("3.png", b"x", "image/png"))], {}, 422, "images"),
    "top_k 0": (lambda t: upload(query_file(t)), {"top_k": "0"}, 422, "top_k 0"),
    "top_k -1": (lambda t: upload(query_file(t)), {"top_k": "-1"}, 422, "top_k -1"),
    "top_k huge": (lambda t: upload(query_file(t)), {"top_k": str(10**12)}, 422, "top_k"),
    "top_k abc": (lambda t: upload(query_file(t)), {"top_k": "abc"}, 422, "top_k"),
    "rerank unknown": (lambda t: upload(query_file(t)), {"rerank": "magic"}, 422, "rerank"),
    "no files": (lambda t: None, {"top_k": "3"}, 422, "images"),
    "too many files": (lambda t: upload(*[query_file(t)] * 3), {}, 422, "at most 2"),
    "binary junk": (lambda t: upload(("junk.jpg", os.urandom(2048))), {}, 415, "junk.jpg"),
    "a long name": (lambda t: upload(("n" * 300 + ".png", b"zz")), {}, 415, "n" * 120 + ":"),
}


@pytest.fixture
def strict_client(index_dir):
    with client_for(index_dir, max_images=2, max_upload_mb=0.05) as test_client:
        yield test_client


@pytest.mark.parametrize("case", list(BAD_UPLOADS), ids=list(BAD_UPLOADS))
def test_bad_search_input_is_a_4xx_json_error(strict_client, trained, case):
    files, data, status, fragment = BAD_UPLOADS[case]
    assert_json_error(strict_client.post("/search", files=files(trained), data=data), status, fragment)


def test_other_bad_requests_are_4xx_json_errors(strict_client, trained):
    assert_json_error(strict_client.post("/embed", files=upload(("fake.png", b"x"))), 415, "fake.png")
    assert_json_error(strict_client.post("/embed"), 422, "images")
    assert_json_error(strict_client.post("/search", json={"images": ["x"]}), 422, "images")
    assert_json_error(
        strict_client.post("/search", content=b"--nope\r\n", headers={"content-type": "multipart/form-data"}), 400
    )
    assert_json_error(strict_client.get("/search"), 405)
    big = upload(("big.png", b"\0" * 60_000))
    assert_json_error(strict_client.post("/search", files=big), 413, "upload limit")


def test_upload_names_are_one_short_line(strict_client):
    body = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a\x01b\x7f.png"\r\n\r\nzz\r\n--b--\r\n'
    response = strict_client.post("/search", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_json_error(response, 415, "upload a?b?.png:")
    assert upload_name(None, 2) == "image 3" and upload_name(" \t ", 0) == "image 1"


def test_body_limit_holds_while_a_body_without_length_streams_in(index_dir):
    """Through the ASGI interface (the test client buffers bodies): the app stops reading at the limit."""
    import anyio

    app = create_app(SearchService.open(ServeSettings(index_dir, max_upload_mb=0.05)))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/search",
        "raw_path": b"/search",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    chunks_read, sent = [], []

    head = b'--x\r\nContent-Disposition: form-data; name="images"; filename="big.png"\r\n\r\n'

    async def receive():  # one file part whose content goes on for 10 MB
        chunks_read.append(1)
        body = head if len(chunks_read) == 1 else b"\0" * 1024
        return {"type": "http.request", "body": body, "more_body": len(chunks_read) < 10_000}

    async def send(message):
        sent.append(message)

    anyio.run(app, scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    assert start["status"] == 413 and "upload limit" in json.loads(body)["error"]
    assert len(chunks_read) <= 53  # 50 KiB and a chunk, not 10 MB


def test_decode_upload_checks_as_the_cli_does(tmp_path):
    photo = Image.new("RGB", (20, 10), (200, 30, 30))
    exif = photo.getexif()
    exif[0x0112] = 6  # stored sideways: to be turned upright
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif)
    assert decode_upload(buffer.getvalue(), "phone.jpg").shape == (20, 10, 3)
    with pytest.raises(DataError, match="decompression bomb"):
        decode_upload(bomb_png(), "bomb.png")
    with pytest.raises(DataError, match=r"upload empty\.png: empty file"):
        decode_upload(b"", "empty.png")


# --------------------------------------------------------------------------------------------- parts


def test_access_log_redacts_the_page_token():
    import logging

    from edgedml.serve.server import RedactToken

    record = logging.LogRecord(
        "uvicorn.access", 20, "", 0, '%s - "%s %s"', ("1.2.3.4", "GET", "/?a=1&token=s3cr3t"), None
    )
    RedactToken().filter(record)
    assert record.getMessage() == '1.2.3.4 - "GET /?a=1&token=***"'


def test_gallery_names_hide_the_device_paths(tmp_path):
    root = tmp_path / "index"
    paths = [
        str(tmp_path / "data" / "cats" / "1.png"),
        str(tmp_path / "data" / "dogs" / "2.png"),
        str(root / "uploads" / "cats" / "ab.png"),
        "digits#12",
    ]
    assert gallery_names(paths, root) == ("cats/1.png", "dogs/2.png", "uploads/cats/ab.png", "digits#12")
    assert gallery_names([str(tmp_path / "one.png")], root) == ("one.png",)


class CountingEmbedder:
    runtime, path = "fake", Path("fake.onnx")

    def __init__(self):
        self.calls = []
        self.info = None

    def embed(self, images):
        self.calls.append(len(images))
        time.sleep(0.01)
        return images.reshape(len(images), -1)[:, :4] * 2


def test_micro_batching_joins_concurrent_calls_and_hands_each_its_rows():
    inner = CountingEmbedder()
    batching = BatchingEmbedder(inner, window_ms=200)
    inputs = [np.full((1 + i % 2, 3, 2, 2), float(i), np.float32) for i in range(8)]
    outputs = [None] * 8
    announced = threading.Barrier(8)

    def request(i):
        with batching.expecting():  # as the service does: announced while decoding, then the model
            announced.wait()
            time.sleep(0.002 * i)
            outputs[i] = batching.embed(inputs[i])

    threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(inner.calls) == sum(len(x) for x in inputs) and len(inner.calls) < 8
    for i, output in enumerate(outputs):
        np.testing.assert_array_equal(output, np.full((len(inputs[i]), 4), 2.0 * i))
    direct = BatchingEmbedder(inner, window_ms=0)
    assert direct.embed(inputs[0]).shape == (1, 4) and direct.calls == 1


def test_a_request_alone_does_not_wait_for_the_window():
    batching = BatchingEmbedder(CountingEmbedder(), window_ms=5000)
    started = time.monotonic()
    with batching.expecting():
        batching.embed(np.zeros((1, 3, 2, 2), np.float32))
    batching.embed(np.zeros((1, 3, 2, 2), np.float32))  # not announced at all
    assert time.monotonic() - started < 2.0 and batching.calls == 2


def test_a_model_error_reaches_every_caller_of_the_batch():
    class Failing(CountingEmbedder):
        def embed(self, images):
            raise RuntimeError("device lost")

    batching = BatchingEmbedder(Failing(), window_ms=100)
    with pytest.raises(RuntimeError, match="device lost"):
        batching.embed(np.zeros((1, 3, 2, 2), np.float32))


# --------------------------------------------------------------------------------------------- the command


def assert_error_line(result, *fragments: str, code: int) -> None:
    assert result.exit_code == code and len(result.error_lines) == 1, str(result)
    assert all(fragment in result.error_lines[0] for fragment in fragments) and "Traceback" not in result.output


def test_cli_refuses_a_public_host_without_token_before_anything(cli, tmp_path):
    from helpers import assert_one_error

    missing = tmp_path / "no-index"
    result = cli("serve", missing, "--host", "0.0.0.0")
    assert_one_error(result, "--host 0.0.0.0", "no token", code=2)
    assert "--no-auth" in result.hint_lines[0] and "--token" in result.hint_lines[0]
    assert_error_line(cli("serve", missing, "--token", "t", "--no-auth"), "exclude each other", code=2)
    assert_error_line(cli("serve", missing, "--top-k", "0"), "--top-k 0", code=2)
    assert_error_line(cli("serve", missing, "--rerank", "magic"), "--rerank 'magic'", code=2)
    assert_error_line(cli("serve", missing, "--port", "70000"), "--port 70000", code=2)
    assert_error_line(cli("serve", missing, "--max-upload-mb", "0"), "--max-upload-mb 0", code=2)
    assert_one_error(cli("serve", missing), "no index.json", code=1)


def test_cli_without_the_serve_extra_says_what_to_install(cli, index_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = cli("serve", index_dir)
    assert result.exit_code == 2 and "uvicorn" in result.output and "pip install 'edgedml[serve]'" in result.output


def test_cli_defaults_are_the_settings_defaults():
    import inspect

    from edgedml.cli.serve import serve

    defaults = {name: p.default for name, p in inspect.signature(serve).parameters.items()}
    settings = ServeSettings(Path("x"))
    for name in ("host", "port", "top_k", "max_upload_mb", "max_images", "batch_window_ms", "threads", "rerank"):
        assert defaults[name] == getattr(settings, name), name


def test_help_imports_no_server_package():
    code = "import sys, edgedml.cli.main; print(sorted({'fastapi', 'uvicorn', 'torch'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert output.stdout.strip() == "[]"


def test_serve_command_on_a_real_socket(index_dir, trained):
    """`edgedml serve --port 0` in a subprocess: its printed URL answers over TCP; Ctrl-C stops it cleanly."""
    import httpx

    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "edgedml.cli.main", "serve", str(index_dir), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        url = read_url(process, lines, seconds=90)
        health = httpx.get(url + "health", timeout=10).json()
        assert health["generation"] == 1 and health["count"] == 60
        files = {"images": (QUERY[1], (trained.data / QUERY[0] / QUERY[1]).read_bytes(), "image/png")}
        answer = httpx.post(url + "search", files=files, data={"top_k": "3"}, timeout=30).json()
        assert answer["results"][0]["hits"][0]["label"] == "class4"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(lines) + output
    assert process.returncode == 0, text
    assert "serving" in text and "generation 1, 60 16-d vectors" in text and "stopped" in text
    assert "Traceback" not in text


def read_url(process: subprocess.Popen, lines: list[str], seconds: float) -> str:
    """The URL the server prints at start (read line by line until it appears, within ``seconds``)."""
    found: list[str] = []

    def reading():
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=reading, daemon=True)
    reader.start()
    reader.join(seconds)
    assert found, "".join(lines)
    return found[0]
