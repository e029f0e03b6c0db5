#!/usr/bin/env python3
"""A slow OAuth2 token endpoint for bench/compare.py's cold-start and refresh rows.

    token_standin.py PORT LOGFILE

Any POST (or GET) to /token/<expires_in>/<delay_ms> answers, after delay_ms milliseconds,
{"access_token": "bench-token", "token_type": "Bearer", "expires_in": <expires_in>}. Each
request appends one line to LOGFILE: its arrival and answer times (Unix seconds) and its path,
so the caller can count token requests and know when a refresh was in flight. Binds 127.0.0.1.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        start = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = self.path.split("?")[0].strip("/").split("/")
        try:
            expires_in, delay_ms = int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            expires_in, delay_ms = 3600, 0
        if delay_ms:
            time.sleep(delay_ms / 1000)
        body = json.dumps({"access_token": "bench-token", "token_type": "Bearer",
                           "expires_in": expires_in}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with LOCK, open(self.server.logfile, "a") as log:
            log.write(f"{start:.6f} {time.time():.6f} {self.path}\n")

    do_GET = do_POST

    def log_message(self, *args):
        pass


def main():
    port, logfile = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.logfile = logfile
    server.serve_forever()


if __name__ == "__main__":
    main()
