//! Streams the `/metrics` exposition to the scraper while it is being written.
//!
//! At 10,000 dueslag the exposition is about 40 MB. Rendering it into one string would
//! add that much to the peak memory of every scrape and block a runtime worker for the
//! whole render. Instead a blocking thread encodes into chunks that go out as they fill,
//! through a small bounded channel: memory stays at a few chunks, the runtime keeps
//! probing, and sending overlaps rendering.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::metrics::{Format, Metrics};

/// Chunks are sent once they hold this much.
const CHUNK: usize = 256 * 1024;
/// Chunks written but not yet sent to the scraper.
const QUEUED_CHUNKS: usize = 4;
/// A scraper that takes no data for this long is given up on, so the metric families'
/// read locks are not held for ever.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);

type Chunk = Result<Bytes, std::io::Error>;

/// The exposition in `format` as a streamed response body.
pub fn body(metrics: Metrics, format: Format) -> Body {
    let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUED_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter::new(tx, STALL_LIMIT);
        // An error here means the scraper went away or stalled; its body simply ends early
        // (with an error, so the connection is closed rather than a cut exposition parsed).
        let written = match format {
            Format::Protobuf => metrics.encode_protobuf(&mut w).is_ok(),
            _ => metrics.encode(format, &mut w).is_ok(),
        };
        if written {
            let _ = w.flush();
        } else {
            w.abort();
        }
    });
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// A [`fmt::Write`] (text) and [`io::Write`] (protobuf) that hands its bytes on in chunks
/// over a bounded channel.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Chunk>,
    stall_limit: Duration,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Chunk>, stall_limit: Duration) -> Self {
        ChunkWriter {
            buf: Vec::with_capacity(CHUNK + CHUNK / 8),
            tx,
            stall_limit,
        }
    }

    /// Sends what is buffered; waits (up to the stall limit) while the channel is full.
    fn flush(&mut self) -> fmt::Result {
        if self.buf.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + CHUNK / 8));
        self.send(Ok(Bytes::from(bytes)))
    }

    /// Ends the body with an error.
    fn abort(&mut self) {
        let _ = self
            .tx
            .try_send(Err(std::io::Error::other("exposition aborted")));
    }

    fn send(&self, mut chunk: Chunk) -> fmt::Result {
        let started = Instant::now();
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(fmt::Error),
                Err(TrySendError::Full(back)) => {
                    if started.elapsed() > self.stall_limit {
                        return Err(fmt::Error);
                    }
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

impl ChunkWriter {
    fn push(&mut self, b: &[u8]) -> fmt::Result {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

impl fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes())
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.push(b)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks go out as they fill; the last one when the render ends.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn drain(rx: &mut mpsc::Receiver<Chunk>) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c.expect("a data chunk"));
        }
        out
    }

    #[test]
    fn text_arrives_whole_in_bounded_chunks() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut w = ChunkWriter::new(tx, Duration::from_secs(1));
        let line = "bfo_alive_probes_total{dueslag=\"d\",mode=\"pull\",result=\"success\"} 1\n";
        let mut want = String::new();
        for _ in 0..20_000 {
            w.write_str(line).unwrap();
            want.push_str(line);
        }
        w.flush().unwrap();
        let chunks = drain(&mut rx);
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < CHUNK + line.len()));
        let got: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(got, want.as_bytes());
    }

    #[test]
    fn a_gone_scraper_stops_the_render() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChunkWriter::new(tx, Duration::from_secs(1));
        let big = "x".repeat(CHUNK);
        assert!(w.write_str(&big).is_err());
    }

    #[test]
    fn a_stalled_scraper_is_given_up_on() {
        let (tx, _rx) = mpsc::channel(1);
        let mut w = ChunkWriter::new(tx, Duration::from_millis(20));
        let big = "x".repeat(CHUNK);
        w.write_str(&big).unwrap(); // fills the one queued slot
        assert!(
            w.write_str(&big).is_err(),
            "nobody reads: the writer must give up"
        );
    }
}
