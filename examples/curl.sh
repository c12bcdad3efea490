#!/usr/bin/env bash
# A tour of the REST API with curl against a running `faena serve` (FAENA_URL).
set -euo pipefail
url="${FAENA_URL:-http://127.0.0.1:8080}"
# Every request carries an API key; the first start of faena wrote an admin key here.
key="${FAENA_API_KEY:-$(cat "${FAENA_DATA_DIR:-./data}/admin.key")}"
auth="Authorization: Bearer $key"
json() { curl -sf -H "$auth" -H 'content-type: application/json' "$@"; echo; }

echo "# create a job of two items; the second one fails with a business error"
job=$(json -X POST "$url/api/v1/jobs" -d '{
  "plugin": "noop", "name": "curl tour",
  "items": [{"input": {"n": 1}, "reference": "OC-1"}, {"input": {"n": 2}, "reference": "OC-2"}],
  "options": {"max_attempts": 3, "on_failure": "review"}}')
echo "$job"
id=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep 1

echo "# the job, its items, its events"
json "$url/api/v1/jobs/$id"
json "$url/api/v1/jobs/$id/items?limit=10"
json "$url/api/v1/events?job=$id&limit=20"

echo "# publish a custom event into the log"
json -X POST "$url/api/v1/events" -d "{\"type\": \"report_sent\", \"job_id\": \"$id\", \"data\": {\"to\": \"ops\"}}"

echo "# an illegal move is refused with 409 and changes nothing"
curl -s -X POST "$url/api/v1/items/$id-0/transition" -H "$auth" -H 'content-type: application/json' -d '{"to": "queued"}'; echo

echo "# plugins, metrics"
json "$url/api/v1/plugins" | head -c 400; echo
curl -sf -H "$auth" "$url/metrics" | grep '^faena_items'
