// faena from TypeScript with openapi-fetch over the types openapi-typescript writes
// from /openapi.json: create a job, page through its items, read one, cancel it, run
// the job to the end and retry what failed, and the 401, 404, 409 and 422 answers as
// typed errors.
//
//   npm run generate && npm run build
//   FAENA_URL=http://127.0.0.1:8080 FAENA_API_KEY=fk_... npm run openapi-fetch
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/schema.js";

type ErrorBody = components["schemas"]["ErrorBody"];
type NewItem = components["schemas"]["NewItem"];

const url = process.env.FAENA_URL ?? "http://127.0.0.1:8080";
const key = process.env.FAENA_API_KEY ?? "";
const faena = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${key}` } });
const run = Date.now().toString();

function check(ok: boolean, what: string): asserts ok {
  if (!ok) throw new Error(what);
}

function expectError(error: ErrorBody | undefined, response: Response, status: number, code: ErrorBody["error"]): ErrorBody {
  check(error !== undefined && response.status === status && error.error === code, `expected ${status} ${code}, got ${response.status} ${JSON.stringify(error)}`);
  return error;
}

// A job of five orders, left pending so one can be cancelled first.
const orders: NewItem[] = [0, 1, 2, 3, 4].map((n) => ({ input: { order: `PO-${run}-${n}` }, reference: `PO-${run}-${n}` }));
const created = await faena.POST("/api/v1/jobs", {
  body: { plugin: "noop", name: "orders from TypeScript", items: orders, start: false, options: { on_failure: "review", unique_references: "reject" } },
});
check(created.data !== undefined, `create: ${created.response.status} ${JSON.stringify(created.error)}`);
let job = created.data;
console.log(`created ${job.id}: ${job.counts.pending} pending, options.max_attempts=${job.options.max_attempts}`);

// Page through its items, two at a time.
const items: components["schemas"]["Item"][] = [];
let cursor: string | undefined;
do {
  const page = await faena.GET("/api/v1/jobs/{id}/items", { params: { path: { id: job.id }, query: { limit: 2, cursor } } });
  check(page.data !== undefined, `items: ${page.response.status}`);
  items.push(...page.data.items);
  cursor = page.data.next_cursor ?? undefined;
} while (cursor);
check(items.map((i) => i.reference).join() === orders.map((o) => o.reference).join(), "items in order");
console.log(`paged through ${items.length} items`);

// Read one and cancel it; retrying a cancelled item is refused with a typed 409.
const first = await faena.GET("/api/v1/items/{id}", { params: { path: { id: items[0].id } } });
check(first.data !== undefined && JSON.stringify(first.data.input) === JSON.stringify(orders[0].input), "read one");
const moved = await faena.POST("/api/v1/items/{id}/transition", {
  params: { path: { id: items[0].id } },
  body: { to: "cancelled", reason: "customer called" },
});
check(moved.data?.status === "cancelled", `cancel: ${moved.response.status}`);
const again = await faena.POST("/api/v1/items/{id}/retry", { params: { path: { id: items[0].id } } });
expectError(again.error, again.response, 409, "conflict");
console.log(`cancelled ${items[0].id}; retrying it: 409 conflict`);

// Run it to the end, then retry what failed (nothing did here).
const started = await faena.POST("/api/v1/jobs/{id}/start", { params: { path: { id: job.id } } });
check(started.data !== undefined, `start: ${started.response.status}`);
const deadline = Date.now() + 60_000;
while (job.status !== "completed" && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 100));
  const read = await faena.GET("/api/v1/jobs/{id}", { params: { path: { id: job.id } } });
  check(read.data !== undefined, `get: ${read.response.status}`);
  job = read.data;
}
check(job.status === "completed" && job.counts.succeeded === 4, `completed: ${JSON.stringify(job.counts)}`);
const retried = await faena.POST("/api/v1/jobs/{id}/retry", { params: { path: { id: job.id } } });
check(retried.data !== undefined, `retry: ${retried.response.status}`);
console.log(`completed: ${job.counts.succeeded} succeeded, ${job.counts.cancelled} cancelled`);

// The errors, typed.
const missing = await faena.GET("/api/v1/jobs/{id}", { params: { path: { id: "01ARZ3NDEKTSV4RRFFQ69G5FAV" } } });
expectError(missing.error, missing.response, 404, "not_found");
const taken = await faena.POST("/api/v1/jobs", { body: { plugin: "noop", items: [orders[1]], options: { unique_references: "reject" } } });
check(expectError(taken.error, taken.response, 409, "reference_taken").references?.[0] === orders[1].reference, "the taken reference");
const invalid = await faena.POST("/api/v1/jobs", { body: { plugin: "no-such-plugin", items: [orders[0]] } });
check(expectError(invalid.error, invalid.response, 422, "invalid").message.includes("no-such-plugin"), "names the plugin");
const stranger = createClient<paths>({ baseUrl: url, headers: { Authorization: "Bearer fk_not_a_key" } });
const refused = await stranger.GET("/api/v1/jobs/{id}", { params: { path: { id: job.id } } });
expectError(refused.error, refused.response, 401, "unauthorized");
console.log("404 not_found, 409 reference_taken, 422 invalid, 401 unauthorized: as typed errors");
console.log("openapi-fetch client: ok");
