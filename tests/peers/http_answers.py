"""An HTTP server that answers as zbridge's /health should not, for
deploy/keepalived/zbridge-check's test.

Binds 127.0.0.1 on a free port, prints `ready PORT`, then answers GET /NAME:
/ok (zbridge's healthy document, for comparison), /slow (the same after
0.2 s), /hang (nothing for 5 s), /unavailable, /okay (200 documents that
are not healthy), /notjson, /empty (200 without a body), /204, /301 (a
redirect to /ok).
"""
import http.server
import time

OK = b'{"role":"active","status":"ok"}'


class Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.split("?")[0].strip("/")
        code, body, headers = 200, OK, {}
        if name == "slow":
            time.sleep(0.2)
        elif name == "hang":
            time.sleep(5)
        elif name == "unavailable":
            body = b'{"role":"active","status":"unavailable"}'
        elif name == "okay":
            body = b'{"status":"okay"}'
        elif name == "notjson":
            body = b"not json"
        elif name == "empty":
            body = b""
        elif name == "204":
            code, body = 204, b""
        elif name == "301":
            code, body, headers = 301, OK, {"Location": "/ok"}
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        if code != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
server.daemon_threads = True
print(f"ready {server.server_address[1]}", flush=True)
server.serve_forever()
