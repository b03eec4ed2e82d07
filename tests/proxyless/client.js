// gRPC's Node xDS client (@grpc/grpc-js with @grpc/grpc-js-xds) driven by
// tests/proxyless_clients.rs over stdin/stdout, with the same JSON-lines protocol as client.py
// (read its docstring). Dials `xds:///TARGET` (argv[2]); the xDS bootstrap comes from
// GRPC_XDS_BOOTSTRAP, as for any grpc-js-xds program.
'use strict';

const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const METHOD = '/shop.Checkout/Buy';
const CALL_TIMEOUT_MS = 5000;

const client = new grpc.Client('xds:///' + process.argv[2], grpc.credentials.createInsecure());
const raw = (b) => b;

function call(ready, timeoutMs) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + (ready ? timeoutMs : CALL_TIMEOUT_MS));
    client.makeUnaryRequest(METHOD, raw, raw, Buffer.alloc(0), new grpc.Metadata(),
      { deadline, waitForReady: ready },
      (err, reply) => resolve(err ? { error: `${err.code}: ${err.details}` } : { reply: reply.toString() }));
  });
}

async function run(cmd) {
  const out = { tally: {}, errors: 0, error_samples: [], calls: 0, done: false };
  const started = Date.now();
  const deadline = started + (cmd.timeout_ms ?? 20000);
  let inARow = 0;
  for (;;) {
    out.calls += 1;
    const r = await call(cmd.op === 'ready', cmd.timeout_ms ?? 20000);
    if (r.error !== undefined) {
      out.errors += 1;
      if (out.error_samples.length < 5) out.error_samples.push(r.error);
    } else {
      out.tally[r.reply] = (out.tally[r.reply] ?? 0) + 1;
    }
    if (cmd.op === 'ready') { out.done = r.error === undefined; break; }
    if (cmd.op === 'calls') {
      if (out.calls >= cmd.n) { out.done = true; break; }
      continue;
    }
    const accepted = r.reply !== undefined &&
      (cmd.accept.includes(r.reply) || cmd.accept.includes(r.reply.split('/')[0]));
    inARow = accepted ? inARow + 1 : 0;
    if (inARow >= cmd.consecutive) { out.done = true; break; }
    if (Date.now() > deadline) break;
  }
  out.ms = Date.now() - started;
  return out;
}

// One command at a time, in order.
const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => process.stdout.write(JSON.stringify(await run(JSON.parse(line))) + '\n'));
});
lines.on('close', () => queue.then(() => { client.close(); process.exit(0); }));
