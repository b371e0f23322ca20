//! Guest stdout and stderr, captured into the host log.
//!
//! A Rust panic's file and line, a Python traceback and a JavaScript stack all arrive on the
//! guest's stderr, so it must reach the operator; but a guest must not be able to write to the
//! host's own stdout (that is for command output, e.g. `--json`). Each complete line goes to
//! `tracing`, tagged with the projector; a line longer than [`MAX_LINE_BYTES`] is cut so a guest
//! cannot make the host buffer without bound.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The longest line kept from a guest's output; the rest of the line is dropped.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// A guest output stream (stdout or stderr) that logs line by line.
#[derive(Clone)]
pub struct GuestOutput {
    tag: Arc<str>,
    stream: &'static str,
}

impl GuestOutput {
    /// An output stream for the projector instance named by `tag`.
    pub fn new(tag: Arc<str>, stream: &'static str) -> Self {
        Self { tag, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger {
            tag: self.tag.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 guests are supported; a p3 guest's output is discarded, not leaked.
        Box::new(tokio::io::sink())
    }
}

struct LineLogger {
    tag: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(projector = %self.tag, stream = self.stream, "{text}");
        }
        self.line.clear();
    }
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for &byte in bytes.iter() {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE_BYTES {
                self.line.push(byte);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}
