//! Captured stdout/stderr: kept up to a cap, the rest discarded without
//! failing the guest (a chatty tool is not an error).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

#[derive(Clone)]
pub struct Captured {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Captured {
    pub fn new(cap: usize) -> Captured {
        Captured { inner: Arc::new(Mutex::new(Inner { buf: Vec::new(), cap, truncated: false })) }
    }

    /// What was captured, as text, with a marker when it was cut.
    pub fn text(&self) -> String {
        let inner = self.inner.lock().expect("capture lock");
        let mut text = String::from_utf8_lossy(&inner.buf).into_owned();
        if inner.truncated {
            text.push_str("\n[output truncated]");
        }
        text
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for Captured {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut inner = self.inner.lock().expect("capture lock");
        let room = inner.cap - inner.buf.len();
        if buf.len() > room {
            inner.truncated = true;
        }
        let take = buf.len().min(room);
        inner.buf.extend_from_slice(&buf[..take]);
        // Report everything as written: the excess is dropped, not an error.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
