// No-op jobs through BullMQ with Redis, measured like faena's engine bench:
// throughput (N jobs added, processed and completed; jobs/s from the first add to the
// last completion) and enqueue→start p50/p99 of single jobs added at a steady rate.
//
//   node noop.mjs PORT ITEMS RATE LATENCY_ITEMS   → one JSON line
import { Queue, Worker } from 'bullmq';

const [port, items, rate, latencyItems] = process.argv.slice(2).map(Number);
const connection = { host: '127.0.0.1', port };
const queue = new Queue('noop', { connection });
await queue.obliterate({ force: true }).catch(() => {});

let done = 0;
const starts = [];
let wake = null;
const worker = new Worker('noop', async (job) => {
  if (job.data.sent) starts.push(Date.now() - job.data.sent);
  return job.data.n;
}, { connection, concurrency: 32 });
worker.on('completed', () => { done += 1; if (wake) wake(); });
await worker.waitUntilReady();

const until = (n) => new Promise((resolve) => {
  const check = () => { if (done >= n) { wake = null; resolve(); } };
  wake = check;
  check();
});
const rssMb = () => process.memoryUsage().rss / 1048576;
const opts = { removeOnComplete: 1000, removeOnFail: 5000 };

const idle = rssMb();
let peak = idle;
const sample = setInterval(() => { peak = Math.max(peak, rssMb()); }, 50);
const t0 = performance.now();
for (let i = 0; i < items; i += 1000) {
  const batch = [];
  for (let j = i; j < Math.min(items, i + 1000); j += 1) batch.push({ name: 'noop', data: { n: j }, opts });
  await queue.addBulk(batch);
}
await until(items);
const itemsPerS = items / ((performance.now() - t0) / 1000);
clearInterval(sample);

done = 0;
const every = 1000 / rate;
let next = Date.now();
for (let i = 0; i < latencyItems; i += 1) {
  const wait = next - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  next += every;
  await queue.add('noop', { n: i, sent: Date.now() }, opts);
}
await until(latencyItems);
starts.sort((a, b) => a - b);
const pct = (q) => starts[Math.min(starts.length - 1, Math.floor(q * starts.length))];
console.log(JSON.stringify({ items_per_s: itemsPerS, p50_ms: pct(0.5), p99_ms: pct(0.99), rss_idle_mb: idle, rss_peak_mb: peak }));
await worker.close();
await queue.close();
process.exit(0);
