// An ordinary Node.js HTTP server that binds its own port, as it would run
// alone (node server.js), and knows nothing of handoff:
//
//   handoff run --listen :3000 -- node server.js
//
// handoff holds port 3000; the worker's server.listen(PORT) is given that
// very socket (bind adoption, --adopt-bind), so every worker accepts from
// one shared queue and deploys lose nothing. PORT comes from handoff (the
// port of the first --listen), as from Heroku or Cloud Run; alone it is
// 3000.
//
// Every request is answered "<version> pid=<pid>", the version being the
// first line of the file VERSION next to this one ("dev" without it).
//
// The one thing a server must get right to lose no request on a deploy is
// its drain on SIGTERM (see drain below): http.Server.close() alone closes
// idle keep-alive connections at once (Node 19+), racing a client that is
// sending its next request on one.
'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

let version = 'dev';
try {
  version = fs.readFileSync(path.join(__dirname, 'VERSION'), 'utf8').split('\n')[0].trim() || 'dev';
} catch (e) {}

const port = Number(process.env.PORT || 3000);
const drainMs = Number(process.env.DRAIN_MS || 10000); // keep below --drain-timeout
const graceMs = 500; // idle keep-alive connections get this long to send a last request

let draining = false;
const conns = new Map(); // socket -> { busy, idleSince, readMark }

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
  req.resume();
  req.on('end', () => {
    if (draining) res.setHeader('Connection', 'close');
    res.end(`${version} pid=${process.pid}\n`);
  });
});
server.keepAliveTimeout = 65000;
server.on('connection', (socket) => {
  conns.set(socket, { busy: false, idleSince: Date.now(), readMark: 0 });
  socket.on('close', () => conns.delete(socket));
});

server.listen(port, () => {
  console.error(`node-port ${version} pid=${process.pid}: listening on ${port}`);
});

// drain: stop accepting (net.Server's close: http.Server's would also close
// idle connections), answer every further request with Connection: close,
// give idle connections a grace in which a busy client sends its next
// request (and gets Connection: close), then close the ones that stayed
// idle and silent; exit once every connection has ended, or at drainMs.
function drain(signal) {
  if (draining) return;
  draining = true;
  console.error(`node-port ${version} pid=${process.pid}: ${signal}, draining ${conns.size} connection(s)`);
  net.Server.prototype.close.call(server);
  const started = Date.now();
  const tick = setInterval(() => {
    const now = Date.now();
    const silent = [];
    for (const [socket, st] of conns) {
      if (!st.busy && now - Math.max(st.idleSince, started) >= graceMs && socket.bytesRead === st.readMark) {
        silent.push([socket, st]);
      }
    }
    // A request that arrived while the process was not scheduled is read
    // in the next poll phase: look again after it.
    setImmediate(() => {
      for (const [socket, st] of silent) {
        if (!st.busy && socket.bytesRead === st.readMark) socket.destroy();
      }
    });
    if (conns.size === 0 || now - started >= drainMs) {
      clearInterval(tick);
      for (const socket of conns.keys()) socket.destroy();
      console.error(`node-port ${version} pid=${process.pid}: drained`);
      process.exit(0);
    }
  }, 50);
}
process.on('SIGTERM', () => drain('SIGTERM'));
process.on('SIGINT', () => drain('SIGINT'));
