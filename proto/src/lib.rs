//! The AgentFS wire protocol between the daemon (`agentfs
//! serve`) and its clients: the CLI, the shim injected into processes, and
//! `agentfs watch`.
//!
//! A connection carries **frames**: a 4-byte big-endian body length, then a
//! MessagePack body (structs as maps with field names, enums by variant
//! name, so fields can be added compatibly). Bodies longer than the
//! receiver's limit ([`MAX_FRAME_LEN`] by default) are refused before
//! anything is allocated. Decoding never panics, whatever the bytes.
//!
//! A client first sends [`ClientFrame::Hello`] (protocol range, pid, ppid,
//! uid, executable, requested branch); the daemon answers
//! [`DaemonFrame::Welcome`] with the agreed version, or
//! [`DaemonFrame::Refused`] and closes. Then the client sends
//! [`ClientFrame::Request`]s with ids it chooses; the daemon answers each
//! with a [`DaemonFrame::Response`] carrying the same id, and pushes
//! [`DaemonFrame::Events`] (native watch records) and
//! [`DaemonFrame::CoreEvents`] (for subscribers) at any time.
//!
//! Two messages travel with exactly one file descriptor in `SCM_RIGHTS`
//! ancillary data, sent with the frame's first byte: a
//! [`Request::Doorbell`] (the app's kqueue, or the socket standing in for
//! its inotify fd) and a successful [`Response::FdOpened`] (the opened
//! file). [`ClientFrame::carries_fd`] and [`DaemonFrame::carries_fd`] say so.
//! [`fd_passing`] sends and receives them; [`client::Client`] is a blocking
//! client doing all of the above.
//!
//! Every `Events` delivery must be acknowledged with [`ClientFrame::Ack`]:
//! the daemon keeps one delivery per watcher outstanding and coalesces
//! what arrives until the acknowledgement.

mod chain_env;
pub mod client;
mod error;
pub mod fd_passing;
mod frame;
mod handshake;
mod malformed;
mod messages;
mod wire_path;

pub use chain_env::{decode_chain_env, encode_chain_env, CHAIN_ENV};
pub use client::{Client, ClientError};
pub use error::WireError;
pub use frame::{
    decode_body, encode_frame, read_frame, read_frame_async, write_frame, write_frame_async,
    FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN,
};
pub use handshake::{negotiate, MAGIC, MAX_HELLO_LEN, MIN_VERSION, VERSION};
pub use malformed::{decode_client_frame, Malformed};
pub use messages::*;
pub use wire_path::WirePath;
