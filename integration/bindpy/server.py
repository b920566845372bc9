"""An ordinary Python HTTP server from the standard library (http.server):
it binds its own port, PORT (8000 alone), and knows nothing of handoff. The
end-to-end tests run it under handoff run, which adopts that bind.

Every request is answered "<version> pid=<pid>", the version being the
first line of VERSION next to this file. On SIGTERM it stops accepting
(the other workers accept from the shared socket) and finishes the requests
it has: its handler threads are not daemons, so server_close() waits for
them. Responses are HTTP/1.0 (http.server's default): each connection
carries one request, so there is no idle keep-alive connection to race.
"""
import http.server
import os
import signal
import sys
import threading

here = os.path.dirname(os.path.abspath(__file__))
try:
    with open(os.path.join(here, "VERSION")) as f:
        version = f.readline().strip() or "dev"
except OSError:
    version = "dev"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer()

    def answer(self):
        body = f"{version} pid={os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight


server = Server(("", int(os.environ.get("PORT", "8000"))), Handler)


def stop(signum, frame):
    print(f"python {version} pid={os.getpid()}: draining", file=sys.stderr, flush=True)
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, stop)
print(f"python {version} pid={os.getpid()}: serving on {server.server_address}", file=sys.stderr, flush=True)
server.serve_forever()
server.server_close()
print(f"python {version} pid={os.getpid()}: drained", file=sys.stderr, flush=True)
