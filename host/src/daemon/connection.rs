//! One client connection: the peer check and the handshake on the
//! executor, then the connection's own thread, blocked in `poll` on the
//! socket between requests, answers them in order, while a delivery task
//! sends whatever the watch service has ready for the connection. The
//! kernel wakes that thread itself when a request arrives: no reactor
//! thread, executor thread or blocking-pool thread stands between the
//! client's frame and the store (each such hop is an idle-to-wake of
//! several microseconds). When the client goes away (closes, dies, or
//! breaks the protocol) everything it registered is released.

use std::{
    collections::VecDeque,
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixStream,
    },
    sync::Arc,
};

use agentfs_plugin_api::watch::WatchApi;
use agentfs_proto::{
    decode_client_frame, encode_frame,
    fd_passing::{recv_with_fds, send_with_fds},
    negotiate, ClientFrame, DaemonFrame, EventDelivery, FrameDecoder, FrameError, Malformed,
    Request, Response, Welcome, WireError, MAX_FRAME_LEN, MAX_HELLO_LEN,
};
use smol::{channel, Async};

use super::{
    convert::wire_error,
    doorbell::DoorbellTarget,
    peer_cred::peer_of,
    state::{Daemon, Session},
    watch_service::Outgoing,
};

/// File descriptors a client may have in flight before frames claim them.
const MAX_PENDING_FDS: usize = 8;

/// Reads client frames and the fds that come with them.
struct FrameReader {
    stream: Arc<Async<UnixStream>>,
    decoder: FrameDecoder,
    fds: VecDeque<OwnedFd>,
    buf: Vec<u8>,
    /// The last read took all the socket held: wait for more before
    /// reading again (a read now would only say `EAGAIN`).
    drained: bool,
}

impl FrameReader {
    fn new(stream: Arc<Async<UnixStream>>) -> Self {
        Self {
            stream,
            // Until the client has said who it is, it can make the daemon
            // hold a Hello's worth of bytes and no more.
            decoder: FrameDecoder::new(MAX_HELLO_LEN),
            fds: VecDeque::new(),
            buf: vec![0u8; 64 * 1024],
            drained: false,
        }
    }

    /// The next frame and, if it carries one, its fd; `None` at a clean
    /// end of stream. A malformed frame is an error.
    async fn next(&mut self) -> Result<Option<(ClientFrame, Option<OwnedFd>)>, FrameError> {
        match self.next_checked().await? {
            None => Ok(None),
            Some((Ok(f), fd)) => Ok(Some((f, fd))),
            Some((Err(Malformed::Request { error, .. } | Malformed::Fatal(error)), _)) => {
                Err(FrameError::Decode(error.message))
            }
        }
    }

    /// The next frame, or why it is malformed (the stream stays in sync
    /// after a malformed body), and the fd it carries; `None` at a clean
    /// end of stream.
    async fn next_checked(&mut self) -> Result<Option<Checked>, FrameError> {
        loop {
            if let Some(f) = self.decoded()? {
                return Ok(Some(f));
            }
            let (buf, fds) = (&mut self.buf, &mut self.fds);
            let n = self
                .stream
                .read_with(|s| recv_with_fds(s.as_fd(), buf, fds))
                .await?;
            if !self.received(n)? {
                return Ok(None);
            }
        }
    }

    /// [`FrameReader::next_checked`] for the connection's own thread: it
    /// blocks in `poll` on the socket, so the kernel wakes this thread
    /// itself when the client writes.
    fn next_checked_blocking(&mut self) -> Result<Option<Checked>, FrameError> {
        loop {
            if let Some(f) = self.decoded()? {
                return Ok(Some(f));
            }
            let n = loop {
                let sock = self.stream.get_ref().as_fd();
                if std::mem::take(&mut self.drained) {
                    wait_readable(sock)?;
                }
                match recv_with_fds(sock, &mut self.buf, &mut self.fds) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(sock)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            // A read that did not fill the buffer took all there was.
            self.drained = n < self.buf.len();
            if !self.received(n)? {
                return Ok(None);
            }
        }
    }

    /// A whole frame already received, if there is one.
    fn decoded(&mut self) -> Result<Option<Checked>, FrameError> {
        let Some(body) = self.decoder.next_body()? else {
            return Ok(None);
        };
        let f = decode_client_frame(&body);
        let fd = if f.as_ref().is_ok_and(ClientFrame::carries_fd) {
            self.fds.pop_front()
        } else {
            if self.decoder.pending() == 0 && !self.fds.is_empty() {
                tracing::debug!(n = self.fds.len(), "closing fds no frame claimed");
                self.fds.clear();
            }
            None
        };
        Ok(Some((f, fd)))
    }

    /// Takes `n` bytes just read into `buf`; false at a clean end of
    /// stream (an error if it ends inside a frame).
    fn received(&mut self, n: usize) -> Result<bool, FrameError> {
        if n == 0 {
            return match self.decoder.pending() {
                0 => Ok(false),
                got => Err(FrameError::Truncated { needed: 0, got }),
            };
        }
        if self.fds.len() > MAX_PENDING_FDS {
            return Err(FrameError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many file descriptors without frames to claim them",
            )));
        }
        self.decoder.push(&self.buf[..n]);
        Ok(true)
    }
}

/// A frame as read: decoded or why not, and the fd it carries.
type Checked = (Result<ClientFrame, Malformed>, Option<OwnedFd>);

/// Blocks until `sock` is readable (or hung up, or in error: the next
/// read says which).
fn wait_readable(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends one frame, with `fds` attached to its first byte.
async fn send_frame(
    stream: &Async<UnixStream>,
    frame: &DaemonFrame,
    fds: Vec<OwnedFd>,
) -> io::Result<()> {
    let bytes = match encode_frame(frame, MAX_FRAME_LEN) {
        Ok(b) => b,
        Err(e) => match frame {
            // A response too large to send becomes an error response.
            DaemonFrame::Response { id, .. } => encode_frame(
                &DaemonFrame::Response {
                    id: *id,
                    result: Err((&e).into()),
                },
                MAX_FRAME_LEN,
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        },
    };
    let mut sent = 0;
    let mut fds = fds;
    // A handed-over writer registration (a `flock` on the open file
    // description) lasts while any copy of its fd is open, the daemon's
    // too: the daemon's copies are closed after the first byte and before
    // the rest of the frame goes, so the client cannot have read the
    // frame (and closed the file, and told another process) while the
    // daemon still holds the registration.
    let split = frame.fds_carried() > 1;
    while sent < bytes.len() {
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let chunk = if split && sent == 0 {
            &bytes[..1]
        } else {
            &bytes[sent..]
        };
        let n = stream
            .write_with(|s| send_with_fds(s.as_fd(), chunk, &borrowed))
            .await?;
        drop(borrowed);
        fds.clear(); // they went with the first chunk
        sent += n;
    }
    Ok(())
}

async fn refuse(stream: &Async<UnixStream>, e: WireError) {
    tracing::info!(error = %e, "refusing a connection");
    if let Err(e) = send_frame(stream, &DaemonFrame::Refused(e), Vec::new()).await {
        tracing::debug!(error = %e, "could not send the refusal");
    }
}

/// Serves one accepted connection until it ends.
pub(super) async fn run(d: Arc<Daemon>, stream: Async<UnixStream>, daemon_uid: u32) {
    let stream = Arc::new(stream);
    let peer = match peer_of(stream.get_ref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer's credentials; closing");
            return;
        }
    };
    let _slot = match d.limits.admit(peer.uid) {
        Ok(slot) => slot,
        Err(open) => {
            let msg = format!(
                "uid {} has {open} connections open, the most this daemon allows \
                 (agentfs serve --max-connections-per-uid)",
                peer.uid
            );
            tracing::warn!(uid = peer.uid, open, "refusing a connection: {msg}");
            let e = WireError {
                code: agentfs_vocab::codes::BUSY,
                errno: libc::EAGAIN,
                message: msg,
            };
            return refuse(&stream, e).await;
        }
    };
    if peer.uid != daemon_uid {
        let msg = format!(
            "uid {} may not use this daemon: it serves uid {daemon_uid} only",
            peer.uid
        );
        refuse(&stream, WireError::new(WireError::PEER_REFUSED, msg)).await;
        return;
    }
    let mut reader = FrameReader::new(stream.clone());
    let hello = match reader.next().await {
        Ok(Some((ClientFrame::Hello(h), _))) => h,
        Ok(Some(_)) => {
            let e = WireError::new(WireError::NOT_HANDSHAKEN, "the first frame must be Hello");
            return refuse(&stream, e).await;
        }
        Ok(None) => return,
        Err(e) => return refuse(&stream, (&e).into()).await,
    };
    let version = match negotiate(&hello) {
        Ok(v) => v,
        Err(e) => return refuse(&stream, e).await,
    };
    if hello.uid != peer.uid {
        let msg = format!(
            "the hello claims uid {}, but the socket's peer is uid {}",
            hello.uid, peer.uid
        );
        return refuse(&stream, WireError::new(WireError::PEER_REFUSED, msg)).await;
    }
    if let Some(b) = hello.branch.clone() {
        let d2 = d.clone();
        let exists = smol::unblock(move || {
            d2.with_store(|st| st.branch(&b).lstat("").map_err(|e| wire_error(&e)))
        })
        .await;
        if let Err(e) = exists {
            return refuse(&stream, e).await;
        }
    }
    let conn = d.begin_session();
    let session = Session {
        conn,
        pid: peer.pid.unwrap_or(hello.pid),
        branch: hello.branch.clone(),
        version,
    };
    tracing::debug!(conn, pid = session.pid, client = %hello.client, "client connected");
    let welcome = DaemonFrame::Welcome(Welcome {
        version,
        daemon: format!("agentfs {}", env!("CARGO_PKG_VERSION")),
        branch: hello.branch,
        session: conn,
    });
    reader.decoder.set_max(MAX_FRAME_LEN);
    if send_frame(&stream, &welcome, Vec::new()).await.is_err() {
        let d2 = d.clone();
        smol::unblock(move || d2.end_session(&session)).await;
        return;
    }
    // The connection's own thread from here; this task waits for it (a
    // connection counts as live until it is done).
    let (done_tx, done_rx) = channel::bounded::<()>(1);
    let d2 = d.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("agentfs-conn-{conn}"))
        .spawn(move || {
            serve_requests(&d2, &stream, &mut reader, &session);
            d2.end_session(&session);
            tracing::debug!(conn, "client gone; its registrations are released");
            drop(done_tx);
        });
    match spawned {
        Ok(_) => {
            let _ = done_rx.recv().await;
        }
        Err(e) => {
            // The closure (and the session in it) is gone with the error:
            // the session must still end.
            tracing::warn!(conn, error = %e, "could not start a connection thread; closing");
            d.end_session(&Session {
                conn,
                pid: 0,
                branch: None,
                version,
            });
        }
    }
}

/// The write side of a connection: whole frames, one at a time, from the
/// request loop (responses) and the delivery task (pushed frames).
struct FrameWriter {
    stream: Arc<Async<UnixStream>>,
    lock: smol::lock::Mutex<()>,
}

impl FrameWriter {
    async fn send(&self, frame: &DaemonFrame, fds: Vec<OwnedFd>) -> io::Result<()> {
        let _g = self.lock.lock().await;
        send_frame(&self.stream, frame, fds).await
    }
}

/// The request loop of a connection, on its own thread: each request is
/// answered where it was read (reads and mutations alike: the thread is
/// this connection's, so a mutation that copies a large file holds up only
/// the connection that asked for it).
fn serve_requests(
    d: &Arc<Daemon>,
    stream: &Arc<Async<UnixStream>>,
    reader: &mut FrameReader,
    s: &Session,
) {
    let writer = Arc::new(FrameWriter {
        stream: stream.clone(),
        lock: smol::lock::Mutex::new(()),
    });
    let (wake_tx, wake_rx) = channel::bounded::<()>(1);
    d.watch.connect(
        s.conn,
        Arc::new(move || {
            let _ = wake_tx.try_send(());
        }),
    );
    let deliveries = smol::spawn(delivery_loop(d.clone(), writer.clone(), s.conn, wake_rx));
    let send = |frame: &DaemonFrame, fds: Vec<OwnedFd>| smol::block_on(writer.send(frame, fds));
    let refuse = |e: WireError| smol::block_on(refuse_frame(&writer, s, e));
    loop {
        let (frame, fd) = match reader.next_checked_blocking() {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => {
                // A length over the limit: the stream cannot be
                // resynchronised. Say so, then close. (An I/O error or a
                // frame cut short: the client is gone.)
                if matches!(e, FrameError::TooLarge { .. } | FrameError::Decode(_)) {
                    refuse((&e).into());
                }
                tracing::debug!(conn = s.conn, error = %e, "closing the connection");
                break;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(Malformed::Request { id, error }) => {
                tracing::debug!(conn = s.conn, id, error = %error, "a malformed request");
                let response = DaemonFrame::Response {
                    id,
                    result: Err(error),
                };
                if let Err(e) = send(&response, Vec::new()) {
                    tracing::debug!(conn = s.conn, error = %e, "write failed");
                    break;
                }
                continue;
            }
            Err(Malformed::Fatal(error)) => {
                refuse(error);
                break;
            }
        };
        match frame {
            ClientFrame::Request { id, request } => {
                let (result, fds) = if request == Request::Ping {
                    (Ok(Response::Pong), Vec::new())
                } else {
                    d.handle(s, request, fd)
                };
                let response = DaemonFrame::Response { id, result };
                if let Err(e) = send(&response, fds) {
                    tracing::debug!(conn = s.conn, error = %e, "write failed");
                    break;
                }
            }
            ClientFrame::Ack(a) => d.watch.ack(s.conn, WatchApi(a.api), a.instance),
            ClientFrame::FdClosed { record } => {
                // No response: the client released the writer registration
                // itself when it closed the fd; what is left is the event.
                if let Err(e) = d.fd_close(s, record) {
                    tracing::debug!(conn = s.conn, record, error = %e, "FdClosed");
                }
            }
            ClientFrame::Hello(_) => {
                let e = WireError::new(
                    WireError::PROTOCOL,
                    "a second Hello: this connection's handshake is done",
                );
                refuse(e);
                break;
            }
        }
    }
    // The client is gone or broke the protocol: whatever is unsent goes.
    smol::block_on(deliveries.cancel());
}

/// Tells the client why its connection is being closed.
async fn refuse_frame(writer: &FrameWriter, s: &Session, e: WireError) {
    tracing::info!(conn = s.conn, error = %e, "closing a connection that broke the protocol");
    if let Err(e) = writer.send(&DaemonFrame::Refused(e), Vec::new()).await {
        tracing::debug!(conn = s.conn, error = %e, "could not send the refusal");
    }
}

/// Sends what the watch service has ready for the connection whenever it
/// is woken.
async fn delivery_loop(
    d: Arc<Daemon>,
    writer: Arc<FrameWriter>,
    conn: u64,
    wake: channel::Receiver<()>,
) {
    while wake.recv().await.is_ok() {
        for o in d.watch.take_ready(conn) {
            if let Err(e) = deliver(&writer, o).await {
                tracing::debug!(conn, error = %e, "write failed");
                return;
            }
        }
    }
}

async fn deliver(writer: &FrameWriter, o: Outgoing) -> io::Result<()> {
    match o {
        Outgoing::Core(batch) => {
            writer
                .send(&DaemonFrame::CoreEvents(batch), Vec::new())
                .await
        }
        Outgoing::Events(del) => {
            if let Some(DoorbellTarget::Socket(sock)) = &del.doorbell {
                sock.push(del.encoded);
                return Ok(());
            }
            let frame = DaemonFrame::Events(EventDelivery {
                api: del.api.0,
                instance: del.instance,
                records: del
                    .records
                    .iter()
                    .map(super::abi_wire::wire_record)
                    .collect(),
                encoded: del.encoded,
            });
            writer.send(&frame, Vec::new()).await
        }
    }
}
