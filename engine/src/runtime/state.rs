//! The data of one component instance (one item run, or one `describe`): WASI with
//! nothing granted, resource limits, and one context per faena interface.

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::browser::BrowserCtx;
use super::host::HostCtx;
use super::http::HttpCtx;

/// What a guest printed to stderr is kept (a panic message, mostly), up to this much.
const STDERR_CAPTURE: usize = 16 * 1024;

pub struct ItemState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub host: HostCtx,
    pub browser: BrowserCtx,
    pub http: HttpCtx,
    pub stderr: MemoryOutputPipe,
    /// The plugin asked to keep this item's portal state (`browser.keep-state`).
    pub keeping: bool,
}

impl ItemState {
    pub fn new(memory_bytes: usize, host: HostCtx, browser: BrowserCtx, http: HttpCtx) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        // No preopened directories, no environment, no arguments, no network: the only
        // ways out are the faena imports, each checked against the plugin's grants.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(16)
            .tables(64)
            .memories(8)
            .build();
        ItemState {
            wasi,
            table: ResourceTable::new(),
            limits,
            host,
            browser,
            http,
            stderr,
            keeping: false,
        }
    }

    /// The last lines the guest wrote to stderr (its panic message, if it panicked).
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }
}

impl WasiView for ItemState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
