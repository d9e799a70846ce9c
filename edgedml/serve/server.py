"""Run the app with uvicorn on a socket bound before it starts (so the URL, port 0 included, is known up front).

Ctrl-C (SIGINT) or SIGTERM: uvicorn stops accepting, lets the requests in flight finish, and returns.
"""

from __future__ import annotations

import logging
import re
import socket

from edgedml.errors import ConfigError

LISTEN_BACKLOG = 128
TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s]*")


def open_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: a free port); a ConfigError when it cannot be bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror})",
            hint="choose another --port (0 picks a free one)" if port else None,
        ) from None
    sock.listen(LISTEN_BACKLOG)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL of a bound socket (IPv6 addresses in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_server(app, sock: socket.socket, access_log: bool = True) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, access_log=access_log, log_level="info", timeout_graceful_shutdown=10)
    logging.getLogger("uvicorn.access").addFilter(RedactToken())  # after Config, which sets up uvicorn's logging
    uvicorn.Server(config).run(sockets=[sock])


class RedactToken(logging.Filter):
    """Access-log lines show ``?token=***``: the page's token never lands in a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True
