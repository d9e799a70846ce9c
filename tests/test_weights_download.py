"""--weights imagenet and `edgedml weights`: downloads from a local HTTP server into a tmp cache, checked by sha256."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_error
from safetensors.torch import save_file

from edgedml.errors import ModelError
from edgedml.models import create_backbone, pretrained
from edgedml.models.pretrained import (
    DEFAULT_BASE_URL,
    IMAGENET,
    PretrainedWeights,
    download_weights,
    registered_weights,
    resolve_weights,
    weights_cache_dir,
)
from edgedml.progress import Progress


class WeightsHandler(SimpleHTTPRequestHandler):
    """Serves the server's folder; with ``server.truncate`` set, announces the full length but sends half."""

    def do_GET(self) -> None:
        if not getattr(self.server, "truncate", False):
            super().do_GET()
            return
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@dataclass
class WeightsServer:
    folder: Path
    server: ThreadingHTTPServer
    thread: threading.Thread
    url: str = ""

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WeightsServer]:
    """An HTTP server on 127.0.0.1 serving tmp_path/served; EDGEDML_WEIGHTS_URL and XDG_CACHE_HOME point at tmp."""
    folder = tmp_path / "served"
    folder.mkdir()
    http = ThreadingHTTPServer(("127.0.0.1", 0), partial(WeightsHandler, directory=str(folder)))
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    running = WeightsServer(folder, http, thread, url=f"http://127.0.0.1:{http.server_address[1]}/")
    thread.start()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEDML_WEIGHTS_URL", running.url)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def tiny_entry(server: WeightsServer) -> Iterator[PretrainedWeights]:
    """The tiny backbone's state dict served as tiny-<sha256[:8]>.safetensors, in the catalogue for the test."""
    staged = server.folder / "tiny.safetensors"
    save_file(create_backbone("tiny").state_dict(), str(staged))
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    served = staged.rename(server.folder / f"tiny-{digest[:8]}.safetensors")
    entry = PretrainedWeights("tiny", served.name, digest, size=served.stat().st_size)
    with registered_weights(entry):
        yield entry


@dataclass
class Recorder(Progress):
    stages: list[tuple[str, int | None]] = field(default_factory=list)
    advanced: int = 0

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        self.stages.append((description, total))

    def advance(self, count: int = 1, status: str | None = None) -> None:
        self.advanced += count


def cache_files() -> list[Path]:
    """Everything in the weights cache, temporary files included."""
    folder = weights_cache_dir()
    return sorted(folder.rglob("*")) if folder.exists() else []


# ---- downloads ------------------------------------------------------------------------------------


def test_download_caches_the_served_bytes_with_a_byte_progress_stage(server, tiny_entry):
    progress = Recorder()
    path = download_weights("tiny", progress)
    assert path == weights_cache_dir() / tiny_entry.file
    assert path.read_bytes() == (server.folder / tiny_entry.file).read_bytes()
    assert cache_files() == [path]  # no temporary file left beside it
    assert progress.stages == [(f"downloading {tiny_entry.file}", tiny_entry.size)]
    assert progress.advanced == tiny_entry.size


def test_resolve_uses_the_cached_file_with_the_server_stopped(server, tiny_entry, monkeypatch):
    path = download_weights("tiny")
    server.stop()
    monkeypatch.setattr(pretrained, "_verified", {})  # a new process: the cached file is checked again
    assert resolve_weights("tiny", IMAGENET) == str(path)
    assert resolve_weights("tiny", IMAGENET) == str(path)


def test_a_corrupted_download_raises_and_caches_nothing(server, tiny_entry):
    served = server.folder / tiny_entry.file
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    with pytest.raises(ModelError) as caught:
        download_weights("tiny")
    got = hashlib.sha256(bytes(data)).hexdigest()
    message = caught.value.message
    assert "\n" not in message
    assert tiny_entry.file in message and "does not match" in message
    assert f"expected {tiny_entry.sha256[:16]}" in message and f"got {got[:16]}" in message
    assert cache_files() == []


def test_a_prefix_only_entry_checks_the_prefix(server, tiny_entry):
    with registered_weights(PretrainedWeights("tiny", tiny_entry.file, tiny_entry.sha256[:8])) as entry:
        assert entry.checksum_kind.startswith("sha256 prefix")
        assert download_weights("tiny").is_file()
    wrong = PretrainedWeights("tiny", tiny_entry.file, "00000000")
    with registered_weights(wrong), pytest.raises(ModelError, match="expected 00000000…"):
        download_weights("tiny", force=True)


def test_a_truncated_response_raises_and_caches_nothing(server, tiny_entry):
    server.server.truncate = True
    with pytest.raises(ModelError) as caught:
        download_weights("tiny")
    assert f"closed after {tiny_entry.size // 2} of {tiny_entry.size} bytes" in caught.value.message
    assert server.url + tiny_entry.file in caught.value.message
    assert cache_files() == []


def test_ctrl_c_mid_download_leaves_no_partial_file(server, tiny_entry):
    class CtrlC(Progress):
        def advance(self, count: int = 1, status: str | None = None) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_weights("tiny", CtrlC())
    assert cache_files() == []


def test_a_cached_file_that_fails_its_check_is_downloaded_again(server, tiny_entry):
    cached = weights_cache_dir() / tiny_entry.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the weights")
    assert download_weights("tiny").read_bytes() == (server.folder / tiny_entry.file).read_bytes()


def test_offline_without_a_cache_names_the_file_and_where_to_put_it(server, tiny_entry):
    server.stop()
    with pytest.raises(ModelError) as caught:
        resolve_weights("tiny", IMAGENET)
    target = weights_cache_dir() / tiny_entry.file
    assert "\n" not in caught.value.message
    assert server.url + tiny_entry.file in caught.value.message and str(target) in caught.value.message
    assert caught.value.hint == f"download {server.url}{tiny_entry.file} and put it at {target}"
    assert cache_files() == []


def test_plain_http_is_refused_except_to_this_machine(server, tiny_entry):
    with pytest.raises(ModelError, match="not https"):
        download_weights("tiny", base_url="http://example.com/models/")


def test_resolve_leaves_paths_and_none_alone(server):
    assert resolve_weights("tiny", None) is None
    assert resolve_weights("tiny", "my/backbone.safetensors") == "my/backbone.safetensors"
    assert cache_files() == []


def test_imagenet_for_a_backbone_without_weights_lists_those_that_have_them(server):
    with pytest.raises(ModelError) as caught:
        resolve_weights("tiny", IMAGENET)
    assert "'tiny' has no ImageNet weights" in caught.value.message
    assert "mobilenetv2, resnet18, resnet34, resnet50" in caught.value.message


def test_the_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert weights_cache_dir() == tmp_path / "edgedml" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights_cache_dir() == Path.home() / ".cache" / "edgedml" / "weights"


# ---- the catalogue --------------------------------------------------------------------------------


def test_the_catalogue_lists_torchvisions_imagenet_files(monkeypatch):
    monkeypatch.delenv("EDGEDML_WEIGHTS_URL", raising=False)
    assert {"resnet18", "resnet34", "resnet50", "mobilenetv2"} <= set(pretrained.CATALOGUE)
    for name, entry in pretrained.CATALOGUE.items():
        assert entry.backbone == name
        url = pretrained.weights_url(entry)
        assert url == DEFAULT_BASE_URL + entry.file and url.startswith("https://download.pytorch.org/models/")
        assert re.fullmatch(r"[0-9a-f]{8}|[0-9a-f]{64}", entry.sha256), name
        assert re.fullmatch(rf"[a-z0-9_]+-{entry.sha256[:8]}\.pth", entry.file), name
        assert entry.size is None or entry.size > 1_000_000
        assert entry.mean == (0.485, 0.456, 0.406) and entry.std == (0.229, 0.224, 0.225)
        assert entry.checksum_kind in ("full sha256", "sha256 prefix (8 hex)")


# ---- the CLI --------------------------------------------------------------------------------------


def test_cli_download_prints_the_cached_path_and_list_shows_it(cli, server, tiny_entry):
    listed = cli("weights", "list", "--json")
    assert listed.exit_code == 0, str(listed)
    assert not next(row for row in yaml.safe_load(listed.stdout) if row["name"] == "tiny")["cached"]

    result = cli("weights", "download", "tiny")
    target = weights_cache_dir() / tiny_entry.file
    assert result.exit_code == 0, str(result)
    assert result.stdout.strip().splitlines()[-1] == str(target)
    assert target.read_bytes() == (server.folder / tiny_entry.file).read_bytes()

    again = cli("weights", "download", "tiny", "--force", "--base-url", server.url)
    assert again.exit_code == 0, str(again)

    table = cli("weights", "list")
    assert table.exit_code == 0, str(table)
    row = next(line for line in table.stdout.splitlines() if " tiny " in line)
    assert tiny_entry.file in row and " yes " in row and str(target) in row and "sha256" in row
    assert "resnet18-f37072fd.pth" in table.stdout


def test_cli_download_offline_is_one_error_line(cli, server, tiny_entry):
    server.stop()
    result = cli("weights", "download", "tiny")
    assert_one_error(result, tiny_entry.file, str(weights_cache_dir() / tiny_entry.file))


def test_cli_download_of_an_unknown_name_lists_the_known_ones(cli, server):
    result = cli("weights", "download", "resnet1000")
    assert_one_error(result, "resnet1000", "resnet18")


def test_train_with_imagenet_weights_downloads_them_and_records_imagenet(cli, server, tiny_entry, tmp_path):
    from edgedml.training import trainer

    resolved: list[str | None] = []

    def recording(backbone, weights, progress):
        resolved.append(resolve_weights(backbone, weights, progress))
        return resolved[-1]

    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "resolve_weights", recording)
        result = cli(
            "train", "--data", "digits", "--backbone", "tiny", "--weights", "imagenet", "--epochs", "1",
            "--batch-size", "20", "--samples-per-class", "4", "--device", "cpu", "--out", run,
        )  # fmt: skip
    assert result.exit_code == 0, str(result)
    target = weights_cache_dir() / tiny_entry.file
    assert resolved == [str(target)]
    assert target.read_bytes() == (server.folder / tiny_entry.file).read_bytes()
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["weights"] == "imagenet"
    assert (run / "summary.json").is_file() and (run / "best.safetensors").is_file()
