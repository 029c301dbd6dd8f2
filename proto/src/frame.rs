//! Length-prefixed MessagePack frames: synchronous, asynchronous
//! (`futures-lite`, for smol) and incremental (for non-blocking sockets).

use std::io::{self, Read, Write};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{de::DeserializeOwned, Serialize};

use crate::WireError;

/// Bytes of the length prefix (big-endian `u32`).
pub const HEADER_LEN: usize = 4;

/// Default maximum body length: 16 MiB.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The length prefix exceeds the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced body length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({got} of {needed} bytes)")]
    Truncated {
        /// Bytes the frame needed.
        needed: usize,
        /// Bytes that came.
        got: usize,
    },
    /// The body is not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("unencodable message: {0}")]
    Encode(String),
}

impl From<&FrameError> for WireError {
    fn from(e: &FrameError) -> Self {
        match e {
            FrameError::TooLarge { .. } => {
                WireError::new(WireError::FRAME_TOO_LARGE, e.to_string())
            }
            FrameError::Io(io) => WireError::from_io("frame", io),
            _ => WireError::new(WireError::PROTOCOL, e.to_string()),
        }
    }
}

/// Encodes `msg` as one frame (prefix and body).
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    rmp_serde::encode::write_named(&mut out, msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Decode(e.to_string()))
}

fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    Ok(len)
}

/// Reads into `buf` until full or end of stream; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

async fn fill_async(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn check_full(needed: usize, got: usize) -> Result<(), FrameError> {
    if got < needed {
        Err(FrameError::Truncated { needed, got })
    } else {
        Ok(())
    }
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly between frames.
pub fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    max: usize,
) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match fill(r, &mut header)? {
        0 => return Ok(None),
        n => check_full(HEADER_LEN, n)?,
    }
    let len = body_len(header, max)?;
    let mut body = vec![0u8; len];
    check_full(len, fill(r, &mut body)?)?;
    decode_body(&body).map(Some)
}

/// Writes one frame and flushes.
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    msg: &T,
    max: usize,
) -> Result<(), FrameError> {
    w.write_all(&encode_frame(msg, max)?)?;
    w.flush()?;
    Ok(())
}

/// Async [`read_frame`] for smol (`futures-lite` traits).
pub async fn read_frame_async<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match fill_async(r, &mut header).await? {
        0 => return Ok(None),
        n => check_full(HEADER_LEN, n)?,
    }
    let len = body_len(header, max)?;
    let mut body = vec![0u8; len];
    check_full(len, fill_async(r, &mut body).await?)?;
    decode_body(&body).map(Some)
}

/// Async [`write_frame`] for smol (`futures-lite` traits).
pub async fn write_frame_async<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
    max: usize,
) -> Result<(), FrameError> {
    w.write_all(&encode_frame(msg, max)?).await?;
    w.flush().await?;
    Ok(())
}

/// Incremental decoder for non-blocking transports: push bytes as they
/// arrive, pop whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing bodies longer than `max`.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Changes the largest body accepted (a daemon raises it after the
    /// handshake).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame's body, undecoded; `Ok(None)` if more bytes
    /// are needed. After an error (a length over the limit) the stream is
    /// out of sync and must be closed.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let len = body_len(header, self.max)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(body))
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an
    /// error the stream is out of sync and must be closed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let len = body_len(header, self.max)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        msg.map(Some)
    }
}
