"""The HTTP API of ``edgedml serve``: FastAPI routes over :class:`~edgedml.serve.service.SearchService`.

Routes (every one behind the bearer token when the server has one; see ``docs/serve.md``):

- ``GET /``: the web page (upload or drop a query image, see its nearest gallery images).
- ``GET /health``: ``{status, generation, count, stale}``.
- ``GET /info``: the model (file name, sha256, runtime, precision, dim, input size), the index (type and
  parameters, generation, count) and the server's limits.
- ``POST /search``: multipart ``images`` (one or more files), ``top_k``, ``rerank`` -> per query its hits.
- ``POST /embed``: multipart ``images`` -> per query its embedding.
- ``POST /index``: multipart ``images`` and ``label`` -> appended as a new generation (``--allow-writes``).
- ``GET /thumbnail/{row}``: a preview of manifest row ``row`` (PNG or JPEG).
- ``GET /docs``, ``GET /openapi.json``: the OpenAPI schema, as FastAPI serves it.

Every error is JSON ``{"error": "<one line>"}`` (with ``hint`` where there is one): 400 an unreadable
image, 401 no or a wrong token, 403 writes off, 404 no such row or route, 413 too large a body, 415
no image format, 422 a bad or missing form field; 5xx only for faults of the server itself. Model
calls and decoding run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edgedml import __version__
from edgedml.data.images import UnsupportedImage
from edgedml.errors import ConfigError, DataError, EdgedmlError
from edgedml.serve.middleware import BearerAuth, BodyLimit
from edgedml.serve.service import NotFound, SearchService, Upload, WritesOff, upload_name
from edgedml.serve.settings import MAX_TOP_K

log = logging.getLogger(__name__)

# The first matching class gives the status; any other library error is the server's own fault.
ERROR_STATUS: tuple[tuple[type[EdgedmlError], int], ...] = (
    (NotFound, 404),
    (WritesOff, 403),
    (UnsupportedImage, 415),
    (ConfigError, 422),
    (DataError, 400),
)
THUMBNAIL_CACHE_CONTROL = "private, max-age=300"

Images = Annotated[
    list[UploadFile], File(description="One or more image files (any format Pillow reads: PNG, JPEG, WebP, ...).")
]


def create_app(service: SearchService) -> FastAPI:
    """The FastAPI application serving ``service`` with the auth and limits of its settings."""
    settings = service.settings
    app = FastAPI(
        title="edgedml serve",
        version=__version__,
        description=f"Image retrieval in the index {settings.collection or Path(settings.location).name}: "
        "search, embed, append.",
    )
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    if settings.token is not None:  # added last, so it runs first: no body is read without the token
        app.add_middleware(BearerAuth, token=settings.token)
    page = files("edgedml.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="Liveness and the generation served")
    async def health() -> dict:
        return service.health()

    @app.get("/info", summary="The model, the index and the server's limits")
    async def info() -> dict:
        return service.info()

    @app.post("/search", summary="The nearest gallery images of each uploaded image")
    async def search(
        images: Images,
        top_k: Annotated[int, Form(description=f"Hits per query, 1..{MAX_TOP_K}.")] = settings.top_k,
        rerank: Annotated[str, Form(description="none | qe | kreciprocal (default: the server's).")] = settings.rerank,
    ) -> dict:
        return await run_in_threadpool(service.search, await _read(images), top_k, rerank)

    @app.post("/embed", summary="The embedding of each uploaded image")
    async def embed(images: Images) -> dict:
        return await run_in_threadpool(service.embed, await _read(images))

    @app.post("/index", summary="Append uploaded images to the index (servers started with --allow-writes)")
    async def append(
        images: Images, label: Annotated[str, Form(description="The class label of every uploaded image.")]
    ) -> dict:
        return await run_in_threadpool(service.append, await _read(images), label)

    @app.get("/thumbnail/{row}", summary="A preview of gallery row `row` (an id from the search hits)")
    async def thumbnail(row: int) -> Response:
        preview = await run_in_threadpool(service.thumbnail, row)
        return Response(preview.data, media_type=preview.media_type, headers={"Cache-Control": THUMBNAIL_CACHE_CONTROL})

    return app


async def _read(images: list[UploadFile]) -> list[Upload]:
    """The uploads' names and bytes (the body limit has bounded their size already)."""
    return [Upload(upload_name(image.filename, position), await image.read()) for position, image in enumerate(images)]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgedmlError)
    async def library_error(request: Request, exc: EdgedmlError) -> JSONResponse:
        status = next((code for kind, code in ERROR_STATUS if isinstance(exc, kind)), 500)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        body = {"error": exc.message} | ({"hint": exc.hint} if exc.hint else {})
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_fault(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)


def validation_message(errors: list[dict]) -> str:
    """FastAPI's validation errors as one line: ``top_k: Input should be a valid integer; images: Field required``."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "form")]
        field = ".".join(location) or "request"
        message = error.get("msg", "invalid")
        if field == "images" and error.get("type") == "missing":
            message = "no image uploaded: send one or more files in the form field 'images'"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
