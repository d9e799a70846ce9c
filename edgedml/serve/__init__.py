"""``edgedml serve``: an index and its model behind an HTTP API and a web page (FastAPI + uvicorn).

The ``serve`` extra installs FastAPI, uvicorn and python-multipart; this package imports none of them
itself (``edgedml.serve.app`` and ``edgedml.serve.server`` do), so ``require_serve_extra`` can say what is
missing before anything is imported. API and semantics: ``docs/serve.md``.
"""

from edgedml.serve.batching import BatchingEmbedder
from edgedml.serve.live import Generation, LiveIndex, gallery_names
from edgedml.serve.service import NotFound, SearchService, Upload, WritesOff
from edgedml.serve.settings import ServeSettings, check_auth, is_loopback, require_serve_extra
from edgedml.serve.uploads import append_uploads, check_label

__all__ = [
    "BatchingEmbedder",
    "Generation",
    "LiveIndex",
    "NotFound",
    "SearchService",
    "ServeSettings",
    "Upload",
    "WritesOff",
    "append_uploads",
    "check_auth",
    "check_label",
    "gallery_names",
    "is_loopback",
    "require_serve_extra",
]
