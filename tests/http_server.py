"""A real HTTP server on 127.0.0.1 serving the cases a URL collect must survive."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.images import image_bytes, shape_image

GOOD_PNG = image_bytes(shape_image("circle", random.Random(11)))
GOOD_JPEG = image_bytes(shape_image("square", random.Random(12)), "JPEG")
FLAKY_PNG = image_bytes(shape_image("triangle", random.Random(13)))
TRICKLE_PNG = image_bytes(shape_image("circle", random.Random(14), size=200))
MAX_BYTES = 64 * 1024  # the cap the tests pass to collect (--max-mb 0.0625)


class ImageServer:
    """Routes by path; `hits` counts requests per path (retries show up there)."""

    def __init__(self, slow_seconds: float = 3.0, flaky_failures: int = 1) -> None:
        self.hits: Counter[str] = Counter()
        self.slow_seconds = slow_seconds
        self.flaky_failures = flaky_failures
        self.release_trickle = threading.Event()
        self.trickle_fast = False
        self.redirects: dict[str, str] = {}  # path → Location of a 302
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def send(self, status: int, body: bytes, ctype: str, length: bool = True) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.hits[path] += 1
                # the client may give up (timeouts, size caps, a killed collect)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.route(self, path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def route(self, h, path: str) -> None:
        match path:
            case "/good.png":
                h.send(200, GOOD_PNG, "image/png")
            case "/octet.jpg":  # a generic binary type: the magic bytes decide
                h.send(200, GOOD_JPEG, "application/octet-stream; charset=binary")
            case "/slow.png":  # headers only after the client's timeout
                time.sleep(self.slow_seconds)
                h.send(200, GOOD_PNG, "image/png")
            case "/big.png":  # declared too large
                h.send(200, b"\x89PNG" + b"0" * (MAX_BYTES * 2), "image/png")
            case "/big-stream.png":  # no Content-Length: caught while streaming
                h.send(200, b"\x89PNG" + b"0" * (MAX_BYTES * 2), "image/png", length=False)
                h.close_connection = True
            case "/page.html":
                h.send(200, b"<html><body>not an image</body></html>", "text/html")
            case "/fake.png":  # says image, is text
                h.send(200, b"this is plain text pretending to be a PNG", "image/png")
            case "/flaky.png":  # fails, then works
                if self.hits[path] <= self.flaky_failures:
                    h.send(503, b"busy", "text/plain")
                else:
                    h.send(200, FLAKY_PNG, "image/png")
            case "/error.png":
                h.send(500, b"broken", "text/plain")
            case "/trickle.png":  # half the body, then waits (a collect killed mid-download)
                if self.trickle_fast:
                    h.send(200, TRICKLE_PNG, "image/png")
                    return
                h.send_response(200)
                h.send_header("Content-Type", "image/png")
                h.send_header("Content-Length", str(len(TRICKLE_PNG)))
                h.end_headers()
                h.wfile.write(TRICKLE_PNG[: len(TRICKLE_PNG) // 2])
                h.wfile.flush()
                self.release_trickle.wait(60)
            case "/to-good.png":  # a relative redirect to an image on the same server
                h.send_response(302)
                h.send_header("Location", "/good.png")
                h.send_header("Content-Length", "0")
                h.end_headers()
            case _ if path in self.redirects:  # a redirect the test set up (e.g. into 10.x)
                h.send_response(302)
                h.send_header("Location", self.redirects[path])
                h.send_header("Content-Length", "0")
                h.end_headers()
            case _:
                h.send(404, b"not found", "text/plain")

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release_trickle.set()
        self.httpd.shutdown()
        self.httpd.server_close()
