"""A WSGI app served by gunicorn under handoff, unmodified:

    handoff run --ready notify --listen 127.0.0.1:8080 -- gunicorn --workers 2 app:app

gunicorn takes the listening socket from LISTEN_FDS (systemd socket
activation, with its strict LISTEN_PID check) and says READY=1 on
NOTIFY_SOCKET; on SIGTERM it stops accepting and lets its workers finish
their requests. Every request is answered "<version> pid=<pid>", the
version being the first line of the file VERSION next to this one ("dev"
without it): a deploy writes a new VERSION (or new code) and sends SIGHUP.
"""
import os

_here = os.path.dirname(os.path.abspath(__file__))
try:
    with open(os.path.join(_here, "VERSION")) as f:
        VERSION = f.readline().strip() or "dev"
except OSError:
    VERSION = "dev"


def app(environ, start_response):
    # Read the body, so that the request is complete before the answer.
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    body = ("%s pid=%d\n" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
