"""A worker written to systemd's socket-activation contract as a C program
would be: a plain blocking accept(2) on fd 3, one connection at a time.

It answers every request with "<version> pid=<pid>" (the version is read
from VERSION beside this file at start) and "Connection: close". It reports
READY=1 on NOTIFY_SOCKET and drains on SIGTERM: it stops accepting and
exits 0 once the connection in hand is answered.

The version token gets "/nonblocking" appended when fd 3 was in
non-blocking mode at exec. An accept(2) that fails with anything but EINTR
(EAGAIN on a non-blocking socket) ends the worker with exit status 1, as
such a program would.
"""

import ctypes
import errno
import fcntl
import os
import signal
import socket
import sys

LISTEN_FD = 3

libc = ctypes.CDLL(None, use_errno=True)
stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True
    # A SIGTERM that came just before accept(2) started does not interrupt
    # it: the interval timer does, so the loop sees stopping.
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(state.encode(), path)
    finally:
        s.close()


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def serve(fd, reply):
    conn = socket.socket(fileno=fd)
    try:
        conn.settimeout(10)
        if read_request(conn):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(reply)
                + reply
            )
    except OSError:
        pass
    finally:
        conn.close()


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    with open(os.path.join(here, "VERSION")) as f:
        version = f.read().strip()
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.stderr.write("blocking worker: LISTEN_PID/LISTEN_FDS do not name one socket for this process\n")
        sys.exit(2)
    if fcntl.fcntl(LISTEN_FD, fcntl.F_GETFL) & os.O_NONBLOCK:
        version += "/nonblocking"
    reply = ("%s pid=%d\n" % (version, os.getpid())).encode()
    notify("READY=1")
    while not stopping:
        fd = libc.accept(LISTEN_FD, None, None)
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            sys.stderr.write("blocking worker: accept: [Errno %d] %s\n" % (err, os.strerror(err)))
            sys.exit(1)
        serve(fd, reply)
    # The default SIGALRM action is back while the interpreter exits.
    signal.setitimer(signal.ITIMER_REAL, 0)
    notify("STOPPING=1")
    sys.exit(0)


main()
