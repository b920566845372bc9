// The CPU-bound worker of benchmark 9: a single-threaded Node.js HTTP
// server that spends WORK_MS (default 2) milliseconds of blocking work, a
// busy loop, on every request, then answers "node pid=<pid>". The bench
// writes this file into its directory and runs it two ways:
//
// * under handoff run --ipc --ready notify: the listening socket is fd 3
//   (LISTEN_FDS), and readiness is {"handoff": "ready"} on the message
//   channel;
// * with CLUSTER=N: Node's own cluster module. This process is the cluster
//   primary and forks N workers that listen on 127.0.0.1:$PORT; the
//   primary accepts every connection and hands it to a worker in turn
//   (SCHED_RR, Node's default on Linux). Once all N listen it prints
//   "listening PID PID ...", their pids, and it stops them on SIGTERM.
'use strict';

const cluster = require('cluster');
const http = require('http');

const workNs = BigInt(Math.round(Number(process.env.WORK_MS || 2) * 1e6));
const workers = Number(process.env.CLUSTER || 0);

if (workers > 0 && cluster.isPrimary) {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  const listening = [];
  cluster.on('listening', (w) => {
    listening.push(w.process.pid);
    if (listening.length === workers) console.log(`listening ${listening.join(' ')}`);
  });
  cluster.on('exit', (w, code, signal) => {
    if (!stopping) {
      console.error(`cluster worker ${w.process.pid} exited (${code}, ${signal})`);
      process.exit(1);
    }
  });
  let stopping = false;
  process.on('SIGTERM', () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
    process.exit(0);
  });
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const reply = `node pid=${process.pid}\n`;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const end = process.hrtime.bigint() + workNs;
      while (process.hrtime.bigint() < end) {
        // blocking work, as CPU-bound code does
      }
      res.end(reply);
    });
  });
  server.keepAliveTimeout = 65000;
  const activated = Number(process.env.LISTEN_FDS || 0) > 0 && Number(process.env.LISTEN_PID) === process.pid;
  const where = activated ? { fd: 3 } : { port: Number(process.env.PORT), host: '127.0.0.1' };
  server.listen(where, () => {
    if (!cluster.isWorker && typeof process.send === 'function') {
      process.send({ handoff: 'ready' });
    }
  });
  process.on('SIGTERM', () => process.exit(0));
}
