"""What ``edgedml serve`` is started with, and the rules those options must meet before anything starts.

Safe by default: the server binds the loopback address; another address needs a bearer token
(``--token``) or an explicit ``--no-auth``. Every limit on a request (upload bytes, images per request,
results per query) is a setting here, checked up front.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from edgedml.errors import ConfigError
from edgedml.retrieval.rerank import RERANK_METHODS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
DEFAULT_MAX_UPLOAD_MB = 16.0
DEFAULT_MAX_IMAGES = 16
# Measured by benchmarks/serve_load.py on a 2-core CPU (docs/serve.md), 30 s per setting: at 16 clients a 3 ms
# window collected 2.6 images per model call for 1.07x the requests/s and a lower p50 (72 vs 78 ms), a higher
# p99 (248 vs 199 ms); one client's p50 was the same (6.4 vs 6.6 ms): a request alone never waits.
DEFAULT_BATCH_WINDOW_MS = 3.0
MAX_BATCH_WINDOW_MS = 1000.0
# One thread per model call: a server runs requests in parallel instead. onnxruntime's default (a thread per
# core, spinning between calls) took 5 ms of CPU per one-image search against 2 ms with one thread, for a
# lower wall time too (tiny 64-d model, 2-core CPU); a large model served to one client at a time may want more.
DEFAULT_THREADS = 1
# The modules the `serve` extra installs (pip name -> module name).
SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python-multipart": "multipart"}


@dataclass(frozen=True)
class ServeSettings:
    """One served index: where it listens, who may call it, and the limits of a request.

    ``token``: the bearer token every request must carry (None: no auth, allowed off loopback only with
    ``no_auth``). ``batch_window_ms``: how long concurrent queries are collected into one model call
    (0: none). ``max_upload_mb``: the limit on a request's body, enforced while it is read. ``threads``:
    PyTorch's threads (process-wide: preprocessing, the torch runtime) and onnxruntime's intra-op threads.
    """

    index_dir: str | Path  # a FAISS index folder, or a Milvus URI / .db file (with ``collection``)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    no_auth: bool = False
    allow_writes: bool = False
    rerank: str = "none"
    top_k: int = DEFAULT_TOP_K
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_images: int = DEFAULT_MAX_IMAGES
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS
    threads: int = DEFAULT_THREADS
    model: Path | None = None
    runtime: str | None = None
    device: str = "cpu"
    collection: str | None = None
    uploads: Path | None = None  # where uploads are stored (default: the index's own folder; Milvus servers: none)

    @property
    def location(self) -> str:
        return str(self.index_dir)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> ServeSettings:
        """Every option's rule, before any file is opened; returns itself."""
        check_auth(self.host, self.token, self.no_auth)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a port number (0..65535; 0 picks a free one)")
        check_top_k(self.top_k, "--top-k")
        check_rerank(self.rerank, "--rerank")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"--max-upload-mb {self.max_upload_mb} must be positive")
        if self.max_images < 1:
            raise ConfigError(f"--max-images {self.max_images} must be at least 1")
        if self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be at least 1")
        if not 0 <= self.batch_window_ms <= MAX_BATCH_WINDOW_MS:
            raise ConfigError(f"--batch-window-ms {self.batch_window_ms} must lie in 0..{MAX_BATCH_WINDOW_MS:g}")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def check_auth(host: str, token: str | None, no_auth: bool) -> None:
    """Off loopback, the server needs a token or the explicit choice of none."""
    if token is not None and no_auth:
        raise ConfigError("--token and --no-auth exclude each other", hint="give one of them")
    if token is not None and not token.strip():
        raise ConfigError("--token is empty", hint="give a long random token, e.g. from: openssl rand -hex 32")
    if token is None and not no_auth and not is_loopback(host):
        raise ConfigError(
            f"--host {host} makes the server reachable from other machines, and it has no token",
            hint="add --token TOKEN (every request then needs 'Authorization: Bearer TOKEN'), "
            "or --no-auth if you mean it",
        )


def check_top_k(top_k: int, option: str = "top_k") -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise ConfigError(f"{option} {top_k} must lie in 1..{MAX_TOP_K}")


def check_rerank(rerank: str, option: str = "rerank") -> None:
    if rerank not in RERANK_METHODS:
        raise ConfigError(f"{option} {rerank!r} is not one of {', '.join(RERANK_METHODS)}")


def require_serve_extra() -> None:
    """FastAPI, uvicorn and python-multipart must be installed (they are imported only by ``edgedml serve``)."""
    missing = [name for name, module in SERVE_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"edgedml serve needs {', '.join(missing)}, which is not installed",
            hint="pip install 'edgedml[serve]'",
        )
