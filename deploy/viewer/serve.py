#!/usr/bin/env python3
"""Serve the OHIF static build and Orthanc's DICOMweb on one origin (stdlib only).

::

    python3 serve.py --dist /opt/dicomnode-viewer/ohif --orthanc http://127.0.0.1:8042 \
        --port 3000 [--bind 127.0.0.1] [--app-config app-config.js] [--access-log FILE]

- ``/dicom-web/…`` and ``/wado…`` go to Orthanc (read-only: GET and HEAD).  The
  ``Host`` header is passed through, because Orthanc's DICOMweb plugin builds the
  RetrieveURL and BulkDataURI it returns from it: they then point back here, so the
  browser never needs CORS or a second origin.
- ``/app-config.js`` is the file given with ``--app-config`` (default: the one beside
  this script), never the build's own, which points at a public demo server.
- Any other path is a file of the build, or ``index.html`` (OHIF routes such as
  ``/viewer?StudyInstanceUIDs=…`` are client-side).

It binds 127.0.0.1 unless told otherwise.  Orthanc and this server have no login:
on a shared network put them behind the site's authenticating reverse proxy.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import mimetypes
import os
import sys
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

logger = logging.getLogger("dicomnode.viewer")

PROXIED = ("/dicom-web/", "/wado")
#: Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded in either direction.
HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                 "proxy-authorization", "proxy-authenticate", "proxy-connection"})
CHUNK = 1 << 16
HERE = Path(__file__).resolve().parent

# The build's wasm codecs must be served as application/wasm or the browser refuses
# to compile them streaming; Debian's mime.types lacks it.
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


class ViewerHandler(SimpleHTTPRequestHandler):
    """One request: a file of the OHIF build, or a read-only request forwarded to Orthanc."""

    protocol_version = "HTTP/1.1"
    server: ViewerServer

    def __init__(self, request: Any, client_address: Any, server: ViewerServer) -> None:
        super().__init__(request, client_address, server, directory=str(server.dist))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s " + format, self.client_address[0], *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.record(self.command, self.path, int(code) if str(code).isdigit() else 0)
        super().log_request(code, size)

    # -- Orthanc ----------------------------------------------------------------
    def _proxy(self) -> None:
        if self.command not in ("GET", "HEAD"):
            self.send_error(405, "the viewer proxy is read-only")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        upstream = self.server.orthanc
        conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port or 80,
                                          timeout=120)
        try:
            conn.request(self.command, upstream.path.rstrip("/") + self.path, headers=headers)
            rsp = conn.getresponse()
        except OSError as exc:
            conn.close()
            self.send_error(502, f"Orthanc unreachable: {exc}")
            return
        try:
            length = rsp.getheader("Content-Length")
            # Without a length (chunked from Orthanc) the body is buffered so the reply
            # can carry one; DICOMweb answers for single frames are small.
            body = rsp.read() if length is None else None
            self.send_response(rsp.status, rsp.reason)
            for key, value in rsp.getheaders():
                if key.lower() not in HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)) if body is not None else str(length))
            self.end_headers()
            if self.command == "HEAD":
                return
            if body is not None:
                self.wfile.write(body)
                return
            while chunk := rsp.read(CHUNK):
                self.wfile.write(chunk)
        finally:
            conn.close()

    # -- the OHIF build -----------------------------------------------------------
    def _static(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/app-config.js":
            self._send_file(self.server.app_config, "text/javascript")
            return
        if not os.path.isfile(self.translate_path(path)):
            self.path = "/index.html"  # a client-side route of the single-page app
        if self.command == "HEAD":
            super().do_HEAD()
        else:
            super().do_GET()

    def _send_file(self, path: Path, content_type: str) -> None:
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def end_headers(self) -> None:
        if not self.path.startswith(PROXIED):
            # The build's file names carry content hashes, but index.html and
            # app-config.js do not: never let a browser keep an old config.
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._proxy() if self.path.startswith(PROXIED) else self._static()

    def do_HEAD(self) -> None:  # noqa: N802
        self._proxy() if self.path.startswith(PROXIED) else self._static()

    def do_POST(self) -> None:  # noqa: N802
        self._proxy() if self.path.startswith(PROXIED) else self.send_error(405)

    do_PUT = do_DELETE = do_POST


class ViewerServer(ThreadingHTTPServer):
    """The same-origin server; ``requests`` keeps (method, path, status) of each answer."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: Path, orthanc: str,
                 app_config: Path, access_log: Path | None = None) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"{dist}/index.html: not an OHIF build (see install-test-deps.sh)")
        self.dist = dist
        self.orthanc = urllib.parse.urlsplit(orthanc)
        self.app_config = app_config
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._log = access_log.open("a", encoding="utf-8") if access_log else None
        super().__init__(address, ViewerHandler)

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))
            if self._log is not None:
                self._log.write(f"{status} {method} {path}\n")
                self._log.flush()

    def server_close(self) -> None:
        super().server_close()
        if self._log is not None:
            self._log.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, required=True, help="OHIF build (its dist/ folder)")
    parser.add_argument("--orthanc", default="http://127.0.0.1:8042", help="Orthanc's HTTP root")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--app-config", type=Path, default=HERE / "app-config.js")
    parser.add_argument("--access-log", type=Path, help="append '<status> <method> <path>' lines")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    server = ViewerServer((args.bind, args.port), args.dist.resolve(), args.orthanc,
                          args.app_config.resolve(), args.access_log)
    logger.info("OHIF on http://%s:%d/ (Orthanc %s)", args.bind, server.server_port, args.orthanc)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
