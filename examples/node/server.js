// A Node.js HTTP server for `handoff run`, with no dependency and no
// native module:
//
//   handoff run --ipc --ready notify --listen 127.0.0.1:8080 -- node server.js
//
// * The listening socket is fd 3 (LISTEN_FDS, systemd socket activation).
// * Readiness: Node cannot send a unix datagram (sd_notify), so it says
//   {"handoff": "ready"} on the message channel `--ipc` gives every worker,
//   which is Node's own IPC channel: process.send works on it as under
//   child_process.fork.
// * Drain on SIGTERM without losing a request from a keep-alive client
//   (see drain below).
//
// Every request is answered "<version> pid=<pid>", the version being the
// first line of the file VERSION next to this one ("dev" without it): a
// deploy writes a new VERSION (or a new server.js) and sends SIGHUP.
// Without LISTEN_FDS it listens on $PORT (default 8080), alone.
'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

let version = 'dev';
try {
  version = fs.readFileSync(path.join(__dirname, 'VERSION'), 'utf8').split('\n')[0].trim() || 'dev';
} catch (e) {}

const drainMs = Number(process.env.DRAIN_MS || 10000); // keep below --drain-timeout
const graceMs = 500; // idle keep-alive connections get this long to send a last request

let draining = false;
// Per connection: is a request in progress, since when is it idle, and how
// many bytes had been read from it then (more means a request is arriving).
const conns = new Map();
const server = http.createServer((req, res) => {
  const st = conns.get(req.socket);
  if (st) {
    st.busy = true;
    res.on('finish', () => {
      st.busy = false;
      st.idleSince = Date.now();
      st.readMark = req.socket.bytesRead;
    });
  }
  req.resume(); // read (and drop) the body, so the connection can be reused
  req.on('end', () => {
    // From the drain on, every response tells the client not to come back
    // on this connection; Node then closes it after the response.
    if (draining) res.setHeader('Connection', 'close');
    res.end(`${version} pid=${process.pid}\n`);
  });
});
server.keepAliveTimeout = 65000;

// A plain net.Server accepts and hands the connections to the HTTP server,
// so stopping accepting (closing the listener) is separate from closing
// connections: since Node 19, http.Server.close() also closes idle
// keep-alive connections at once, racing a client that is sending on one.
const acceptor = net.createServer((socket) => {
  conns.set(socket, { busy: false, idleSince: Date.now(), readMark: 0 });
  socket.on('close', () => conns.delete(socket));
  server.emit('connection', socket);
});

const activated = Number(process.env.LISTEN_FDS || 0) > 0 && Number(process.env.LISTEN_PID) === process.pid;
acceptor.listen(activated ? { fd: 3 } : { port: Number(process.env.PORT || 8080), host: '127.0.0.1' }, () => {
  console.error(`node ${version} pid=${process.pid}: serving`);
  ready();
});

function ready() {
  if (typeof process.send === 'function') {
    process.send({ handoff: 'ready' });
  }
}

// drain: stop accepting (the other workers keep accepting on the shared
// socket), answer every further request with Connection: close, give idle
// connections a grace in which a busy client sends its next request (and
// gets Connection: close), then close the ones that stayed idle and silent
// (no byte read since their last response); exit once every connection
// has ended, or at drainMs.
function drain(signal) {
  if (draining) return;
  draining = true;
  console.error(`node ${version} pid=${process.pid}: ${signal}, draining ${conns.size} connection(s)`);
  if (typeof process.send === 'function') process.send({ handoff: 'stopping' });
  acceptor.close();
  const started = Date.now();
  const tick = setInterval(() => {
    const now = Date.now();
    const silent = [];
    for (const [socket, st] of conns) {
      if (!st.busy && now - Math.max(st.idleSince, started) >= graceMs && socket.bytesRead === st.readMark) {
        silent.push([socket, st]);
      }
    }
    // Timers run before the event loop reads the sockets: a request
    // that arrived while this process was not scheduled is still unread.
    // Look again after the next poll phase has read what is there.
    if (silent.length > 0) {
      setImmediate(() => {
        for (const [socket, st] of silent) {
          if (!st.busy && socket.bytesRead === st.readMark) socket.destroy();
        }
      });
    }
    if (conns.size === 0 || now - started >= drainMs) {
      clearInterval(tick);
      for (const socket of conns.keys()) socket.destroy();
      console.error(`node ${version} pid=${process.pid}: drained`);
      // The message channel keeps the process alive only while there are
      // 'message' listeners; disconnect to be sure.
      if (process.connected) process.disconnect();
      process.exit(0);
    }
  }, 50);
}
process.on('SIGTERM', () => drain('SIGTERM'));
process.on('SIGINT', () => drain('SIGINT'));
