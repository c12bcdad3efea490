//! A browser page in the item's isolated context, with errors that name the selector.

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
}
