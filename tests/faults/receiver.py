"""A webhook receiver as its own process, so the fault suite can kill it and start it again.

``python receiver.py --port P --log FILE --secret S`` appends one JSON line per request to FILE (the
headers, the body, whether the signature verified) and answers 200. Run again on the same port after
a kill, it appends to the same file: the log spans every life of the receiver.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from toolkit.webhooks import SIGNATURE_HEADER, verify_signature


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            header = self.headers.get(SIGNATURE_HEADER) or ""
            record = {
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
                "signature_valid": verify_signature(args.secret, header, body),
            }
            # Recorded (flushed) before answering: a request this receiver acknowledged is in the log.
            with lock, open(args.log, "a") as log:
                log.write(json.dumps(record) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
