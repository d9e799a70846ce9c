"""ImageNet weights for the built-in backbones: ``--weights imagenet`` and ``edgedml weights download NAME``.

The catalogue lists torchvision's official ImageNet-1K checkpoints (``IMAGENET1K_V1``). A file is
fetched once into ``weights_cache_dir()``, streamed to a temporary sibling while it is hashed, and
renamed into place only when its sha256 matches; a truncated or corrupted download, a network error
or Ctrl-C therefore leaves nothing in the cache. An offline device uses the cached file, or the
file copied there by hand (the error of a failed download says where).

torchvision names each file after the first 8 hex digits of its sha256, and checks only those.
Where the full digest is recorded below, it is checked in full; otherwise the prefix is.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from edgedml.config import IMAGENET_MEAN, IMAGENET_STD
from edgedml.errors import ModelError
from edgedml.io import atomic_path
from edgedml.progress import SILENT, Progress
from edgedml.units import format_bytes

log = logging.getLogger(__name__)

IMAGENET = "imagenet"  # the --weights value that asks for the catalogue's file
DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
BASE_URL_ENV = "EDGEDML_WEIGHTS_URL"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
FULL_DIGEST_HEX = 64
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, timeouts and TLS errors are OSErrors


@dataclass(frozen=True)
class PretrainedWeights:
    """One downloadable weight file for ``backbone``.

    ``sha256`` is the full digest (64 hex) when one is recorded, else the prefix in the file's name;
    ``digest_source`` says where the full digest comes from. ``mean``/``std`` are the RGB input
    normalization the weights were trained with.
    """

    backbone: str
    file: str
    sha256: str
    size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tag: str = "IMAGENET1K_V1"
    digest_source: str = "the file name (torchvision's own check)"

    @property
    def full_digest(self) -> bool:
        return len(self.sha256) == FULL_DIGEST_HEX

    @property
    def checksum_kind(self) -> str:
        return "full sha256" if self.full_digest else f"sha256 prefix ({len(self.sha256)} hex)"


# File names from torchvision/models/resnet.py and mobilenetv2.py (``*_Weights.IMAGENET1K_V1``). torchvision
# publishes no full digests; the ones below were recorded independently by several public projects that pin
# and verify these files (a Rust model zoo's pinned torchvision checkpoints, download scripts, and for
# MobileNetV2 an OpenEmbedded recipe's SRC_URI sha256sum and a D3M primitive's file_digest), each starting
# with torchvision's prefix. Sizes where those records give them (None: unknown, not checked).
_PINNED_BY = "independent public pins that agree (see the comment above CATALOGUE)"
CATALOGUE: dict[str, PretrainedWeights] = {
    entry.backbone: entry
    for entry in (
        PretrainedWeights(
            "resnet18",
            "resnet18-f37072fd.pth",
            "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
            size=46_830_571,
            digest_source=_PINNED_BY,
        ),
        PretrainedWeights(
            "resnet34",
            "resnet34-b627a593.pth",
            "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f",
            digest_source=_PINNED_BY,
        ),
        PretrainedWeights(
            "resnet50",
            "resnet50-0676ba61.pth",
            "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
            size=102_530_333,
            digest_source=_PINNED_BY,
        ),
        PretrainedWeights(
            "mobilenetv2",
            "mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            digest_source=_PINNED_BY,
        ),
    )
}


@contextmanager
def registered_weights(entry: PretrainedWeights) -> Iterator[PretrainedWeights]:
    """Add ``entry`` to the catalogue for the duration of a ``with`` block (tests, private mirrors)."""
    previous = CATALOGUE.get(entry.backbone)
    CATALOGUE[entry.backbone] = entry
    try:
        yield entry
    finally:
        if previous is None:
            CATALOGUE.pop(entry.backbone, None)
        else:
            CATALOGUE[entry.backbone] = previous


def catalogue_entry(backbone: str) -> PretrainedWeights:
    """The catalogue's weights for ``backbone``; else one ModelError listing the backbones that have some."""
    entry = CATALOGUE.get(backbone)
    if entry is None:
        known = ", ".join(sorted(CATALOGUE))
        raise ModelError(
            f"backbone {backbone!r} has no ImageNet weights; these have: {known}",
            hint="pick one of those backbones, or give --weights a local weight file",
        )
    return entry


def weights_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgedml/weights``, by default ``~/.cache/edgedml/weights``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgedml" / "weights"


def cached_path(entry: PretrainedWeights) -> Path:
    return weights_cache_dir() / entry.file


def weights_url(entry: PretrainedWeights, base_url: str | None = None) -> str:
    """The file's URL under ``base_url``, else ``$EDGEDML_WEIGHTS_URL``, else download.pytorch.org."""
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = base.rstrip("/") + "/" + entry.file
    _check_scheme(url)
    return url


@dataclass(frozen=True)
class WeightsStatus:
    """One row of ``edgedml weights list``."""

    name: str
    file: str
    url: str
    cached: bool
    path: str
    checksum: str
    size: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def weights_status(base_url: str | None = None) -> list[WeightsStatus]:
    """Every catalogue entry, and whether its file is in the cache (by presence and size; not rehashed)."""
    rows = []
    for name in sorted(CATALOGUE):
        entry = CATALOGUE[name]
        path = cached_path(entry)
        cached = path.is_file() and (entry.size is None or path.stat().st_size == entry.size)
        url = weights_url(entry, base_url)
        rows.append(WeightsStatus(name, entry.file, url, cached, str(path), entry.checksum_kind, entry.size))
    return rows


def resolve_weights(backbone: str, weights: str | None, progress: Progress = SILENT) -> str | None:
    """What ``create_backbone`` loads for a ``--weights`` value: None, a local path as given, or for
    ``imagenet`` the cached catalogue file (verified, downloaded first when it is missing)."""
    if weights != IMAGENET:
        return weights
    path = download_weights(backbone, progress)
    log.info("ImageNet weights for %s: %s", backbone, path)
    return str(path)


def download_weights(name: str, progress: Progress = SILENT, base_url: str | None = None, force: bool = False) -> Path:
    """The verified cached file of catalogue entry ``name``; fetched when missing, when it fails its
    check, or with ``force``. Nothing is left in the cache unless the whole file matched its sha256."""
    entry = catalogue_entry(name)
    target = cached_path(entry)
    if target.is_file() and not force:
        if _cached_file_matches(entry, target):
            return target
        log.warning("%s does not match its %s; downloading it again", target, entry.checksum_kind)
    url = weights_url(entry, base_url)
    with atomic_path(target) as tmp:
        digest = _stream_to(url, tmp, target, entry, progress)
        _check_digest(entry, digest, url)
    _remember_verified(target)
    return target


# ---- the download ---------------------------------------------------------------------------------


def _check_scheme(url: str) -> None:
    """HTTPS, or plain HTTP to this machine only (a local mirror, the tests' server)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        return
    raise ModelError(
        f"weights URL {url} is not https (plain http is allowed only to 127.0.0.1)",
        hint=f"set {BASE_URL_ENV} to an https:// mirror, or unset it for {DEFAULT_BASE_URL}",
    )


def _stream_to(url: str, tmp: Path, target: Path, entry: PretrainedWeights, progress: Progress) -> str:
    """Write ``url``'s body to ``tmp`` while hashing it; the sha256 hex digest. A network failure, or a
    body shorter than its Content-Length, raises one ModelError that says where to put the file by hand."""
    request = urllib.request.Request(url, headers={"User-Agent": "edgedml", "Accept-Encoding": "identity"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, target, _reason(exc)) from None
    digest = hashlib.sha256()
    received = 0
    with response, tmp.open("wb") as out:
        length = _content_length(response)
        expected = length or entry.size
        progress.stage(f"downloading {entry.file}", total=expected)
        while chunk := _read_chunk(response, url, target):
            digest.update(chunk)
            _write_chunk(out, chunk, tmp)
            received += len(chunk)
            progress.advance(len(chunk), _progress_status(received, expected))
    if length is not None and received != length:
        raise _network_error(url, target, f"the connection closed after {received} of {length} bytes")
    return digest.hexdigest()


def _read_chunk(response: http.client.HTTPResponse, url: str, target: Path) -> bytes:
    try:
        return response.read(CHUNK_BYTES)
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, target, _reason(exc)) from None


def _write_chunk(out: BinaryIO, chunk: bytes, tmp: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise ModelError(
            f"cannot write {tmp.parent}: {exc.strerror or exc}", hint="free disk space, or set XDG_CACHE_HOME"
        ) from None


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def _progress_status(received: int, expected: int | None) -> str:
    return format_bytes(received) + (f" of {format_bytes(expected)}" if expected else "")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _network_error(url: str, target: Path, reason: str) -> ModelError:
    cached = "was not replaced" if target.is_file() else "is not there"
    return ModelError(
        f"cannot download {url} ({reason}); {target} {cached}",
        hint=f"download {url} and put it at {target}",
    )


def _check_digest(entry: PretrainedWeights, digest: str, url: str) -> None:
    if digest.startswith(entry.sha256):
        return
    shown = min(len(entry.sha256), 16)
    raise ModelError(
        f"{entry.file} from {url} does not match its {entry.checksum_kind}: "
        f"expected {entry.sha256[:shown]}…, got {digest[:shown]}…; it was not cached",
        hint="download it again; if it keeps failing the mirror serves a different file",
    )


# ---- files already in the cache -------------------------------------------------------------------

# Cached files hashed in this process, by path: (size, mtime) when they matched. A training run therefore
# hashes a 100 MB checkpoint once, not at every model build, and still sees a file replaced since.
_verified: dict[Path, tuple[int, int]] = {}


def _cached_file_matches(entry: PretrainedWeights, path: Path) -> bool:
    stat = path.stat()
    if _verified.get(path) == (stat.st_size, stat.st_mtime_ns):
        return True
    if entry.size is not None and stat.st_size != entry.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    if not digest.hexdigest().startswith(entry.sha256):
        return False
    _remember_verified(path)
    return True


def _remember_verified(path: Path) -> None:
    stat = path.stat()
    _verified[path] = (stat.st_size, stat.st_mtime_ns)
