//! A browser page in the item's isolated context, with errors that name the selector.

use crate::Cookie;
use crate::bindings::faena::plugin::browser;
use crate::{Error, Result};

pub struct Page {
    inner: browser::Page,
}

impl Page {
    /// Open a page in this item's own browser context.
    pub fn open() -> Result<Page> {
        Ok(Page {
            inner: browser::open_page()?,
        })
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.inner
            .goto(url)
            .map_err(|e| Error::from(e).context(&format!("goto {url}")))
    }

    pub fn fill(&self, selector: &str, value: &str) -> Result<()> {
        self.inner.fill(selector, value).map_err(Error::from)
    }

    /// Fill several fields in order.
    pub fn fill_all(&self, fields: &[(&str, &str)]) -> Result<()> {
        fields.iter().try_for_each(|(s, v)| self.fill(s, v))
    }

    pub fn click(&self, selector: &str) -> Result<()> {
        self.inner.click(selector).map_err(Error::from)
    }

    /// Click a submit button or link and wait until the page it loads is there.
    pub fn click_and_wait(&self, selector: &str, timeout_ms: u32) -> Result<()> {
        self.inner
            .click_and_wait(selector, timeout_ms)
            .map_err(Error::from)
    }

    pub fn select(&self, selector: &str, value: &str) -> Result<()> {
        self.inner.select(selector, value).map_err(Error::from)
    }

    pub fn wait_for(&self, selector: &str, timeout_ms: u32) -> Result<()> {
        self.inner
            .wait_for(selector, timeout_ms)
            .map_err(Error::from)
    }

    pub fn exists(&self, selector: &str) -> Result<bool> {
        self.inner.exists(selector).map_err(Error::from)
    }

    pub fn text(&self, selector: &str) -> Result<String> {
        self.inner.text(selector).map_err(Error::from)
    }

    pub fn attribute(&self, selector: &str, name: &str) -> Result<Option<String>> {
        self.inner.attribute(selector, name).map_err(Error::from)
    }

    pub fn screenshot(&self) -> Result<Vec<u8>> {
        self.inner.screenshot().map_err(Error::from)
    }

    pub fn url(&self) -> Result<String> {
        self.inner.url().map_err(Error::from)
    }

    pub fn download(&self, url: &str, name: &str) -> Result<String> {
        self.inner.download(url, name).map_err(Error::from)
    }

    /// Evaluate a JavaScript expression and parse its JSON value.
    pub fn evaluate(&self, expression: &str) -> Result<serde_json::Value> {
        let text = self.inner.evaluate(expression)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::application(format!("evaluate returned non-JSON: {e}")))
    }
    /// The cookies of the item's browser context, for every site.
    pub fn cookies(&self) -> Result<Vec<Cookie>> {
        self.inner.cookies().map_err(Error::from)
    }

    /// Add or replace cookies in the item's browser context.
    pub fn set_cookies(&self, cookies: &[Cookie]) -> Result<()> {
        self.inner.set_cookies(cookies).map_err(Error::from)
    }

    pub fn title(&self) -> Result<String> {
        self.inner.title().map_err(Error::from)
    }

    /// The document's HTML.
    pub fn content(&self) -> Result<String> {
        self.inner.content().map_err(Error::from)
    }

    /// How many elements match.
    pub fn count(&self, selector: &str) -> Result<u32> {
        self.inner.count(selector).map_err(Error::from)
    }

    /// The visible text of every element that matches.
    pub fn texts(&self, selector: &str) -> Result<Vec<String>> {
        self.inner.texts(selector).map_err(Error::from)
    }

    pub fn is_visible(&self, selector: &str) -> Result<bool> {
        self.inner.is_visible(selector).map_err(Error::from)
    }

    /// Check or uncheck a checkbox; choose a radio button (`true`).
    pub fn check(&self, selector: &str, checked: bool) -> Result<()> {
        self.inner.check(selector, checked).map_err(Error::from)
    }

    /// Choose an option of a `<select>` by its visible text.
    pub fn select_label(&self, selector: &str, label: &str) -> Result<()> {
        self.inner
            .select_label(selector, label)
            .map_err(Error::from)
    }

    /// Press a key (`Enter`, `Tab`, a character...) in the element.
    pub fn press(&self, selector: &str, key: &str) -> Result<()> {
        self.inner.press(selector, key).map_err(Error::from)
    }

    /// Put a file into an `<input type=file>`.
    pub fn upload(
        &self,
        selector: &str,
        name: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<()> {
        self.inner
            .upload(selector, name, content_type, data)
            .map_err(Error::from)
    }

    pub fn reload(&self) -> Result<()> {
        self.inner.reload().map_err(Error::from)
    }

    pub fn go_back(&self) -> Result<()> {
        self.inner.go_back().map_err(Error::from)
    }

    /// Wait until the URL contains `part`.
    pub fn wait_for_url(&self, part: &str, timeout_ms: u32) -> Result<()> {
        self.inner
            .wait_for_url(part, timeout_ms)
            .map_err(Error::from)
    }

    /// Wait until the element's text contains `text`.
    pub fn wait_for_text(&self, selector: &str, text: &str, timeout_ms: u32) -> Result<()> {
        self.inner
            .wait_for_text(selector, text, timeout_ms)
            .map_err(Error::from)
    }

    /// Move the mouse over the element.
    pub fn hover(&self, selector: &str) -> Result<()> {
        self.inner.hover(selector).map_err(Error::from)
    }

    /// The dialogs (alert, confirm...) the item's pages showed, as `type: message`;
    /// each was answered OK at once, or Cancel after [`Page::dismiss_dialogs`].
    pub fn dialogs(&self) -> Vec<String> {
        self.inner.dialogs()
    }

    pub fn dismiss_dialogs(&self, dismiss: bool) {
        self.inner.dismiss_dialogs(dismiss)
    }
}
