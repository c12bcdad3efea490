"""A browser page in the item's own isolated context (cookies, storage). Every
method raises BusinessError or ApplicationError as the host reports it."""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional, Union

from wit_world.imports import browser, types

from .errors import ApplicationError, FaenaError, host_call

Cookie = types.Cookie

#: How long a page may take to load or an element to appear, by default.
TIMEOUT_MS = 20_000


class Page:
    """A tab of the item's browser context, closed when the item ends. In a session,
    `Page.open()` returns the session's one page, where the last call left it."""

    def __init__(self, inner: browser.Page) -> None:
        self._inner = inner

    @classmethod
    def open(cls) -> "Page":
        """Open a page in this item's browser context (the operation must declare
        `browser=True` and the plugin be granted the browser)."""
        return cls(host_call(browser.open_page))

    def goto(self, url: str) -> None:
        try:
            host_call(self._inner.goto, url)
        except FaenaError as e:
            raise e.context(f"goto {url}") from None

    def fill(self, selector: str, value: str) -> None:
        """Replace the value of an input or textarea."""
        host_call(self._inner.fill, selector, value)

    def fill_all(self, fields: Union[Mapping[str, str], Iterable[tuple[str, str]]]) -> None:
        """Fill several fields in order: `{"#user": u, "#password": p}` or pairs."""
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        for selector, value in pairs:
            self.fill(selector, value)

    def click(self, selector: str) -> None:
        host_call(self._inner.click, selector)

    def click_and_wait(self, selector: str, timeout_ms: int = TIMEOUT_MS) -> None:
        """Click a submit button or link and wait until the page it loads is there."""
        host_call(self._inner.click_and_wait, selector, timeout_ms)

    def select(self, selector: str, value: str) -> None:
        """Choose an option of a `<select>` by value."""
        host_call(self._inner.select, selector, value)

    def select_label(self, selector: str, label: str) -> None:
        """Choose an option of a `<select>` by its visible text."""
        host_call(self._inner.select_label, selector, label)

    def wait_for(self, selector: str, timeout_ms: int = TIMEOUT_MS) -> None:
        """Wait until an element matches."""
        host_call(self._inner.wait_for, selector, timeout_ms)

    def wait_for_url(self, part: str, timeout_ms: int = TIMEOUT_MS) -> None:
        """Wait until the page's URL contains `part`."""
        host_call(self._inner.wait_for_url, part, timeout_ms)

    def wait_for_text(self, selector: str, text: str, timeout_ms: int = TIMEOUT_MS) -> None:
        """Wait until an element's visible text contains `text`."""
        host_call(self._inner.wait_for_text, selector, text, timeout_ms)

    def hover(self, selector: str) -> None:
        """Move the mouse over the element (a menu that opens on hover)."""
        host_call(self._inner.hover, selector)

    def dialogs(self) -> list[str]:
        """The dialogs (alert, confirm...) the item's pages showed, as `type: message`;
        each was answered OK at once, or Cancel after `dismiss_dialogs(True)`."""
        return self._inner.dialogs()

    def dismiss_dialogs(self, dismiss: bool = True) -> None:
        self._inner.dismiss_dialogs(dismiss)

    def exists(self, selector: str) -> bool:
        """Whether an element matches now."""
        return host_call(self._inner.exists, selector)

    def is_visible(self, selector: str) -> bool:
        return host_call(self._inner.is_visible, selector)

    def count(self, selector: str) -> int:
        return host_call(self._inner.count, selector)

    def text(self, selector: str) -> str:
        """The element's visible text."""
        return host_call(self._inner.text, selector)

    def texts(self, selector: str) -> list[str]:
        """The visible text of every element that matches, in document order."""
        return host_call(self._inner.texts, selector)

    def attribute(self, selector: str, name: str) -> Optional[str]:
        return host_call(self._inner.attribute, selector, name)

    def check(self, selector: str, checked: bool = True) -> None:
        """Check or uncheck a checkbox, or choose a radio button."""
        host_call(self._inner.check, selector, checked)

    def press(self, selector: str, key: str) -> None:
        """Focus the element and press a key (`Enter`, `Tab`, `ArrowDown`, `a`...)."""
        host_call(self._inner.press, selector, key)

    def upload(self, selector: str, name: str, content_type: str, data: bytes) -> None:
        """Put a file into an `<input type=file>`."""
        host_call(self._inner.upload, selector, name, content_type, bytes(data))

    def title(self) -> str:
        return host_call(self._inner.title)

    def content(self) -> str:
        """The document's HTML."""
        return host_call(self._inner.content)

    def url(self) -> str:
        return host_call(self._inner.url)

    def reload(self) -> None:
        host_call(self._inner.reload)

    def go_back(self) -> None:
        host_call(self._inner.go_back)

    def screenshot(self) -> bytes:
        """A PNG of the page."""
        return host_call(self._inner.screenshot)

    def download(self, url: str, name: str) -> str:
        """Fetch `url` with the page's cookies and save it as an artifact; its id."""
        return host_call(self._inner.download, url, name)

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression; its value, parsed from JSON."""
        text = host_call(self._inner.evaluate, expression)
        try:
            return json.loads(text)
        except ValueError as e:
            raise ApplicationError(f"evaluate returned non-JSON: {e}") from None

    def cookies(self) -> list[Cookie]:
        """The cookies of this page's browser context, for every site."""
        return host_call(self._inner.cookies)

    def set_cookies(self, cookies: Iterable[Cookie]) -> None:
        """Add (or replace, by name, domain and path) cookies in the context."""
        host_call(self._inner.set_cookies, list(cookies))
