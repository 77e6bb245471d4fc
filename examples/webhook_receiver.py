#!/usr/bin/env python3
"""A dexpulse webhook receiver in Python, standard library only: verifies each request's
Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature: v1,<base64
HMAC-SHA256 of "id.timestamp.body">, keyed by the whsec_ secret), refuses stale timestamps,
and handles each event once even when dexpulse delivers it twice (at least once: the
webhook-id is the event id, the idempotency key).

    python3 examples/webhook_receiver.py 8090 /path/to/whsec_file

Prints one line per event: `event <seq> <kind> <webhook-id>`, or `duplicate <webhook-id>`.
Answers 204 when the signature holds, 401 when it does not (dexpulse retries, then
dead-letters), so a forged request is never acted on.
"""
import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 5 * 60


def secret_key(text):
    text = text.strip()
    if not text.startswith("whsec_"):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(text[len("whsec_"):])


def verify(key, msg_id, timestamp, body, header):
    """Whether any v1 signature in the header is ours for this message."""
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for sig in header.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def handler_for(key):
    seen = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            msg_id = self.headers.get("webhook-id", "")
            ts = self.headers.get("webhook-timestamp", "")
            sig = self.headers.get("webhook-signature", "")
            fresh = ts.isdigit() and abs(time.time() - int(ts)) <= TOLERANCE_S
            if not (fresh and verify(key, msg_id, ts, body, sig)):
                print(f"refused {msg_id or '-'}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            if msg_id in seen:
                print(f"duplicate {msg_id}", flush=True)
            else:
                seen.add(msg_id)
                m = json.loads(body)
                print(f"event {m['seq']} {m['event']['kind']} {msg_id}", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def main():
    port = int(sys.argv[1])
    with open(sys.argv[2]) as f:
        key = secret_key(f.read())
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(key))
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
