"""gsp-python: place one consultant's order in the supplier ordering portal — the
`gsp` flow (plugins/gsp/src/lib.rs) written in Python with the faena SDK.

Log in as the supervisor, search and select the consultant, choose the campaign
cycle, open the cart, add each product, confirm. Each stage is a checkpoint
(`login_ok`, `consultant_selected`, `cycle_selected`, `cart_open`,
`products_added`, `completed`). The order carries the item's idempotency key in
its note, so every retry looks the order up in the portal's list before placing it
again: an order is never placed twice.

Settings: `portal_url` (e.g. `http://127.0.0.1:8090`), optional `cycle`.
Secrets: `gsp_supervisor`, `gsp_password`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from faena import (
    ApplicationError,
    BusinessError,
    Context,
    FaenaError,
    Operation,
    Page,
    Plugin,
    export,
    required_setting,
    secret,
    setting,
    step,
)

#: How long one page may take to load.
PAGE_MS = 20_000
MAX_QUANTITY = 999

SCHEMA = {
    "type": "object",
    "required": ["consultora_code", "rows"],
    "properties": {
        "consultora_code": {"type": "string", "minLength": 1},
        "consultora_name": {"type": "string"},
        "cycle": {
            "type": "string",
            "description": "campaign cycle; default: the `cycle` setting, else the portal's current one",
        },
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["product_code", "quantity"],
                "properties": {
                    "product_code": {"type": "string", "minLength": 1},
                    "quantity": {"type": ["integer", "string"]},
                },
            },
        },
    },
    "x-faena-import": {
        "group_by": "consultora_code",
        "required": ["consultora_code", "product_code", "quantity"],
        "positive_integer": ["quantity"],
    },
}


@dataclass
class Order:
    consultant: str
    cycle: Optional[str]
    lines: list[tuple[str, int]]


def _text(obj: Any, key: str) -> Optional[str]:
    """obj[key] trimmed, if it is a non-empty string."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _quantity(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        q = value
    elif isinstance(value, str) and re.fullmatch(r"\+?[0-9]+", value.strip()):
        q = int(value.strip())
    else:
        return None
    return q if 1 <= q <= MAX_QUANTITY else None


def parse(input: Any) -> Order:
    def bad(message: str) -> BusinessError:
        return BusinessError(message, code="bad-input")

    consultant = _text(input, "consultora_code")
    if consultant is None:
        raise bad("input.consultora_code: a consultant code is required")
    rows = input.get("rows") if isinstance(input, dict) else None
    if not isinstance(rows, list) or not rows:
        raise bad("input.rows: at least one product line is required")
    lines = []
    for i, row in enumerate(rows):
        code = _text(row, "product_code")
        if code is None:
            raise bad(f"input.rows[{i}].product_code: a product code is required")
        quantity = _quantity(row.get("quantity"))
        if quantity is None:
            raise bad(
                f"input.rows[{i}].quantity: a whole number from 1 to {MAX_QUANTITY} is required"
            )
        lines.append((code.upper(), quantity))
    cycle = input.get("cycle")
    cycle = cycle if isinstance(cycle, str) else setting("cycle")
    return Order(consultant.upper(), cycle or None, lines)


def arrive(page: Page, *expected: str) -> str:
    """Which page the portal shows, checked against what the flow expects. The portal
    sends an expired session back to its login page and answers maintenance with an
    `unavailable` page: both are application errors, retried with backoff."""
    view = page.evaluate("document.body ? (document.body.dataset.page || '') : ''")
    view = view if isinstance(view, str) else ""
    if view in expected:
        return view
    try:
        message = page.text("#error")
    except FaenaError:
        message = ""
    if view == "login":
        raise ApplicationError("the portal session expired", code="session-expired")
    if view == "unavailable":
        raise ApplicationError(
            f"the portal is unavailable: {message}", code="unavailable", retry_after_ms=2_000
        )
    try:
        url = page.url()
    except FaenaError:
        url = ""
    raise ApplicationError(
        f"expected the {' or '.join(expected)} page, the portal shows `{view}` ({url}): {message}",
        code="unexpected-page",
    )


def login(page: Page, base: str) -> None:
    supervisor = secret("gsp_supervisor")
    password = secret("gsp_password")
    page.goto(f"{base}/gsp/login")
    arrive(page, "login")
    page.fill_all({"#supervisor": supervisor, "#password": password})
    page.click_and_wait("#login", PAGE_MS)
    if arrive(page, "consultants", "login") == "login":
        # Never retried: retrying a refused password locks the account.
        try:
            why = page.text("#error")
        except FaenaError:
            why = ""
        raise BusinessError(f"the portal refused the login: {why}", code="login-refused")


def placed_order(page: Page, base: str, order: Order, key: str) -> Optional[str]:
    """The order an earlier attempt placed, found by the idempotency key in its note."""
    page.goto(f"{base}/gsp/orders?consultant={order.consultant}")
    arrive(page, "orders")
    found = page.evaluate(
        "(() => { const r = [...document.querySelectorAll('#orders tr[data-note]')]"
        f".find(r => r.dataset.note === {json.dumps(key)});"
        " return r ? r.querySelector('.order-id').textContent.trim() : null; })()"
    )
    return found if isinstance(found, str) else None


def place(order: Order, ctx: Context) -> dict:
    base = required_setting("portal_url").rstrip("/")
    page = Page.open()
    login(page, base)
    step("login_ok")

    def result(order_id: str, cycle: str, recovered: bool) -> dict:
        return {
            "order_id": order_id,
            "consultant": order.consultant,
            "cycle": cycle,
            "products": len(order.lines),
            "recovered": recovered,
        }

    # Any retry looks first: an earlier attempt may have confirmed the order, and the
    # last checkpoint alone cannot tell (a retry that failed before getting as far
    # records earlier steps after it).
    if ctx.attempt > 1:
        found = placed_order(page, base, order, ctx.idempotency_key)
        if found is not None:
            step("completed", found)
            return result(found, order.cycle or "", True)

    page.goto(f"{base}/gsp/consultants")
    arrive(page, "consultants")
    page.fill("#consultant-code", order.consultant)
    page.click_and_wait("#search", PAGE_MS)
    arrive(page, "consultants")
    if page.exists("#error"):
        raise BusinessError(page.text("#error"), code="unknown-consultant")
    page.click_and_wait("#select-consultant", PAGE_MS)
    arrive(page, "cycle")
    step("consultant_selected", order.consultant)

    if order.cycle:
        try:
            page.select("#cycle", order.cycle)
        except FaenaError as e:
            raise e.context("campaign cycle") from None
    cycle = page.evaluate("document.querySelector('#cycle').value")
    cycle = cycle if isinstance(cycle, str) else ""
    page.click_and_wait("#choose-cycle", PAGE_MS)
    arrive(page, "summary")
    step("cycle_selected", cycle)

    page.click_and_wait("#open-cart", PAGE_MS)
    arrive(page, "cart")
    step("cart_open")

    for code, quantity in order.lines:
        page.fill("#product-code", code)
        page.fill("#quantity", str(quantity))
        page.click_and_wait("#add", PAGE_MS)
        arrive(page, "cart")
        if page.exists("#error"):
            why = page.text("#error")
            if "out of stock" in why:
                code_of = "out-of-stock"
            elif "does not exist" in why:
                code_of = "unknown-product"
            else:
                code_of = "line-refused"
            raise BusinessError(why, code=code_of)
        if not page.exists(f'#cart-lines tr[data-code="{code}"]'):
            raise ApplicationError(f"product {code} is not in the cart after adding it")
    step("products_added", f"{len(order.lines)} products")

    page.fill("#note", ctx.idempotency_key)
    page.click_and_wait("#confirm", PAGE_MS)
    arrive(page, "confirmation")
    order_id = page.text("#order-id").strip()
    step("completed", order_id)
    return result(order_id, cycle, False)


class Gsp(Plugin):
    name = "gsp-python"
    version = "0.1.0"
    description = "Places consultant orders in the gsp supplier ordering portal"
    operations = [
        Operation(
            "run",
            "Place one consultant's order: rows of product code and quantity",
            SCHEMA,
            browser=True,
            secrets=["gsp_supervisor", "gsp_password"],
        )
    ]

    def run(self, operation: str, input: Any, ctx: Context) -> Any:
        if operation == "run":
            return place(parse(input), ctx)
        return super().run(operation, input, ctx)


WitWorld = export(Gsp)
