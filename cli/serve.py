"""edgedml serve: an index and its model behind an HTTP API and a web page, until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedml.cli.common import RerankOption, console, library_errors, setup_logging
from edgedml.cli.index import CollectionOption, DeviceOption, RuntimeOption

# The defaults of edgedml.serve.settings.ServeSettings (imported when the command runs: it loads torch).
DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TOP_K = "127.0.0.1", 8000, 10
DEFAULT_MAX_UPLOAD_MB, DEFAULT_MAX_IMAGES, DEFAULT_BATCH_WINDOW_MS, DEFAULT_THREADS = 16.0, 16, 3.0, 1


def serve(
    index_dir: Annotated[
        str,
        typer.Argument(
            help="An index written by edgedml index: its folder, or a Milvus PATH.db / http://HOST:19530 URI.",
            show_default=False,
        ),
    ],
    collection: CollectionOption = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; other than loopback it needs --token or --no-auth.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="TCP port (0: a free one, printed at start).")] = DEFAULT_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="EDGEDML_SERVE_TOKEN",
            help="Bearer token every request must carry ('Authorization: Bearer TOKEN'; the page takes ?token=).",
            show_default=False,
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Serve a non-loopback --host without a token (anyone reaching it may search)."),
    ] = False,
    allow_writes: Annotated[
        bool, typer.Option("--allow-writes", help="Enable POST /index: uploaded images appended as a new generation.")
    ] = False,
    uploads: Annotated[
        Path | None,
        typer.Option(
            "--uploads",
            help="Where uploaded images are stored (default: INDEX/uploads, or PATH.db.uploads for Milvus Lite; "
            "required with --allow-writes for a Milvus server URI).",
        ),
    ] = None,
    rerank: RerankOption = "none",  # /search's default; a request may choose another
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Default hits per query of /search.")] = DEFAULT_TOP_K,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest request body in MiB (refused with 413 while read).")
    ] = DEFAULT_MAX_UPLOAD_MB,
    max_images: Annotated[int, typer.Option("--max-images", help="Most images in one request.")] = DEFAULT_MAX_IMAGES,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            "--batch-window-ms",
            help="Wait at most this long for concurrent queries to share one model call (0: no micro-batching).",
        ),
    ] = DEFAULT_BATCH_WINDOW_MS,
    threads: Annotated[
        int,
        typer.Option(
            "--threads", help="Threads per model call (onnxruntime, PyTorch); requests run in parallel besides."
        ),
    ] = DEFAULT_THREADS,
    model: Annotated[
        Path | None, typer.Option("--model", help="The index's model at another location (checked against the index).")
    ] = None,
    runtime: RuntimeOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Serve an index: search, embed and (with --allow-writes) append over HTTP, and a search page at /.

    A new generation written by edgedml index --append is served without a restart. API: /docs.
    """
    setup_logging(verbose=True)  # a server's log: generations picked up, appends
    from edgedml.serve.settings import ServeSettings, require_serve_extra

    settings = ServeSettings(
        index_dir=index_dir,
        host=host,
        port=port,
        token=token,
        no_auth=no_auth,
        allow_writes=allow_writes,
        rerank=rerank,
        top_k=top_k,
        max_upload_mb=max_upload_mb,
        max_images=max_images,
        batch_window_ms=batch_window_ms,
        threads=threads,
        model=model,
        runtime=runtime,
        device=device,
        collection=collection,
        uploads=uploads,
    )
    with library_errors():
        settings.check()
        require_serve_extra()
        from edgedml.serve.app import create_app
        from edgedml.serve.server import open_socket, run_server, url_of
        from edgedml.serve.service import SearchService

        service = SearchService.open(settings)
        sock = open_socket(host, port)
    info = service.info()
    url = url_of(sock)
    served = service.live.current().index.location
    console.print(
        f"serving {escape(served)}: generation {info['index']['generation']}, {info['index']['count']:,} "
        f"{info['index']['dim']}-d vectors ({info['index']['type']}), model {escape(info['model']['file'])} "
        f"({info['model']['runtime']}, {info['model']['precision']}), writes {'on' if allow_writes else 'off'}, "
        f"auth {'bearer token' if token is not None else 'none'}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(f"open {url} (API: {url}docs); Ctrl-C stops", soft_wrap=True, highlight=False)
    try:
        run_server(create_app(service), sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    console.print("stopped", highlight=False)
