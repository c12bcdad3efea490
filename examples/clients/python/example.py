"""faena from Python through the client openapi-python-client generates from
/openapi.json: create a job, page through its items, read one, cancel it, run the job
to the end and retry what failed, and meet the 401, 404, 409 and 422 answers as typed
values.

    FAENA_URL=http://127.0.0.1:8080 FAENA_API_KEY=fk_... python example.py
"""

import io
import os
import sys
import time

from faena_client import AuthenticatedClient
from faena_client.api.items import get_item, retry_item, transition_item
from faena_client.api.jobs import create_job, get_job, import_job, list_job_items, retry_job, start_job
from faena_client.models import (
    ErrorBody,
    ImportJobBody,
    ImportJobBodyMapping,
    ErrorCode,
    FailurePolicy,
    ItemDetail,
    ItemPage,
    ItemStatus,
    Job,
    JobOptionsInput,
    JobStatus,
    NewItem,
    NewJob,
    ReferencePolicy,
    TransitionRequest,
)
from faena_client.types import File

url = os.environ.get("FAENA_URL", "http://127.0.0.1:8080")
client = AuthenticatedClient(base_url=url, token=os.environ["FAENA_API_KEY"])
run = str(int(time.time() * 1000))


def expect(answer, status, kind):
    """The answer's status and parsed type, or exit saying what came instead."""
    if answer.status_code != status or not isinstance(answer.parsed, kind):
        sys.exit(f"expected {status} {kind.__name__}, got {answer.status_code}: {answer.content!r}")
    return answer.parsed


# A job of five orders, left pending so one can be cancelled and retried first.
orders = [NewItem(input_={"order": f"PO-{run}-{n}"}, reference=f"PO-{run}-{n}") for n in range(5)]
job = expect(
    create_job.sync_detailed(
        client=client,
        body=NewJob(
            plugin="noop",
            name="orders from Python",
            items=orders,
            start=False,
            options=JobOptionsInput(
                on_failure=FailurePolicy.REVIEW,
                unique_references=ReferencePolicy.REJECT,
            ),
        ),
    ),
    201,
    Job,
)
print(f"created {job.id}: {job.counts.pending} pending, options.max_attempts={job.options.max_attempts}")

# Page through its items, two at a time.
items, cursor = [], None
while True:
    page = expect(
        list_job_items.sync_detailed(job.id, client=client, limit=2, **({"cursor": cursor} if cursor else {})),
        200,
        ItemPage,
    )
    items += page.items
    cursor = page.next_cursor if isinstance(page.next_cursor, str) else None
    if cursor is None:
        break
assert [i.reference for i in items] == [o.reference for o in orders], items
print(f"paged through {len(items)} items")

# Read one and cancel it; a cancelled item cannot be retried (only failed ones and
# those waiting for review can), and the answer says so as a typed 409.
first = expect(get_item.sync_detailed(items[0].id, client=client), 200, ItemDetail)
assert first.input_ == {"order": f"PO-{run}-0"}, first.input_
moved = transition_item.sync_detailed(
    first.id,
    client=client,
    body=TransitionRequest(to=ItemStatus.CANCELLED, reason="customer called"),
)
assert moved.status_code == 200, moved.content
conflict = expect(retry_item.sync_detailed(first.id, client=client), 409, ErrorBody)
assert conflict.error == ErrorCode.CONFLICT, conflict
print(f"cancelled {first.id}; retrying it: 409 {conflict.error.value}")

# Run it to the end.
expect(start_job.sync_detailed(job.id, client=client), 200, Job)
deadline = time.time() + 60
while True:
    job = expect(get_job.sync_detailed(job.id, client=client), 200, Job)
    if job.status == JobStatus.COMPLETED or time.time() > deadline:
        break
    time.sleep(0.1)
assert job.status == JobStatus.COMPLETED and job.counts.succeeded == 4, job
print(f"completed: {job.counts.succeeded} succeeded, {job.counts.cancelled} cancelled")
# Retry what failed (nothing did here: the job stays as it is).
job = expect(retry_job.sync_detailed(job.id, client=client), 200, Job)

# A spreadsheet import: options and column renames are typed parts, not JSON text.
sheet = f"Codigo,qty\nIMP-{run}-A,1\nIMP-{run}-B,2\n".encode()
imported = expect(
    import_job.sync_detailed(
        client=client,
        body=ImportJobBody(
            file=File(payload=io.BytesIO(sheet), file_name="orders.csv"),
            plugin="noop",
            options=JobOptionsInput(max_attempts=2),
            mapping=ImportJobBodyMapping.from_dict({"Codigo": "code"}),
        ),
    ),
    201,
    Job,
)
assert imported.counts.queued + imported.counts.running + imported.counts.succeeded == 2, imported.counts
assert imported.options.max_attempts == 2
print(f"imported {imported.id} from a spreadsheet: 2 items")

# The errors, typed.
missing = expect(get_job.sync_detailed("01ARZ3NDEKTSV4RRFFQ69G5FAV", client=client), 404, ErrorBody)
assert missing.error == ErrorCode.NOT_FOUND
taken = expect(
    create_job.sync_detailed(
        client=client,
        body=NewJob(
            plugin="noop",
            items=[orders[1]],
            options=JobOptionsInput(unique_references=ReferencePolicy.REJECT),
        ),
    ),
    409,
    ErrorBody,
)
assert taken.error == ErrorCode.REFERENCE_TAKEN and taken.references == [orders[1].reference], taken
invalid = expect(
    create_job.sync_detailed(client=client, body=NewJob(plugin="no-such-plugin", items=orders[:1])),
    422,
    ErrorBody,
)
assert invalid.error == ErrorCode.INVALID and "no-such-plugin" in invalid.message
stranger = AuthenticatedClient(base_url=url, token="fk_not_a_key")
refused = expect(get_job.sync_detailed(job.id, client=stranger), 401, ErrorBody)
assert refused.error == ErrorCode.UNAUTHORIZED
print("404 not_found, 409 reference_taken, 422 invalid, 401 unauthorized: as typed errors")
print("python client: ok")
