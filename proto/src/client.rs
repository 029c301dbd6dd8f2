//! A blocking client of the daemon: connect, handshake, requests (one at a
//! time or pipelined), file descriptors both ways, and the frames the daemon
//! pushes (watch deliveries, core events). The `agentfs` CLI, `agentfs
//! watch`, the tests and benchmarks use it; the shim needs nothing else.

use std::{
    collections::{HashMap, VecDeque},
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    encode_frame,
    fd_passing::{recv_with_fds, send_all_with_fd},
    Ack, ClientFrame, DaemonFrame, FdOpen, FdOpened, FrameDecoder, FrameError, Hello, Request,
    Response, Welcome, WireError, MAX_FRAME_LEN,
};

/// Why a client call failed. (Messages include their cause, so none is
/// reported again as a `source`.)
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the daemon at {}: {error}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A frame could not be sent or received.
    #[error("daemon connection: {0}")]
    Frame(FrameError),
    /// The daemon refused the handshake.
    #[error("the daemon refused the connection: {0}")]
    Refused(WireError),
    /// The request failed in the daemon.
    #[error("{0}")]
    Daemon(WireError),
    /// The daemon said something out of protocol.
    #[error("daemon protocol error: {0}")]
    Protocol(String),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
}

/// How many times [`Client::connect`] retries a daemon that closed the
/// connection before its welcome.
const CONNECT_ATTEMPTS: u32 = 5;

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Frame(FrameError::Io(e))
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl ClientError {
    /// True when no daemon listens on the socket (it does not exist, or
    /// nothing accepts on it): callers fall back to working without one.
    pub fn is_no_daemon(&self) -> bool {
        match self {
            Self::Connect { error, .. } => matches!(
                error.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ),
            _ => false,
        }
    }

    /// True when the daemon closed the connection before answering the
    /// hello (it is stopping).
    fn is_closed_before_welcome(&self) -> bool {
        match self {
            Self::Closed => true,
            Self::Frame(FrameError::Io(e)) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// The daemon's error, when the request itself failed.
    pub fn wire(&self) -> Option<&WireError> {
        match self {
            Self::Daemon(w) | Self::Refused(w) => Some(w),
            _ => None,
        }
    }
}

/// One answered request: the response (or the daemon's error) and the fds
/// that came with it.
type Answer = (Result<Response, WireError>, Vec<OwnedFd>);

/// Bytes one read of the socket takes at most.
const RECV_BUF_LEN: usize = 64 * 1024;

/// Bytes the first read takes at most: one page. Most clients (a process
/// under the shim) read a few small frames, and the allocator may clear a
/// whole buffer up front (calloc of reused heap: a page fault per page).
const FIRST_RECV_BUF_LEN: usize = 4 * 1024;

/// A handshaken connection to the daemon.
#[derive(Debug)]
pub struct Client {
    sock: UnixStream,
    decoder: FrameDecoder,
    fds: VecDeque<OwnedFd>,
    next_id: u64,
    answers: HashMap<u64, Answer>,
    pushed: VecDeque<DaemonFrame>,
    welcome: Welcome,
    /// The receive buffer, made at the first read and kept: one page at
    /// first, doubled (up to [`RECV_BUF_LEN`]) each time a read fills it,
    /// so a process that reads a few small frames clears one page, where
    /// a buffer on the stack was cleared whole on every read.
    recv_buf: RecvBuf,
}

/// [`Client`]'s receive buffer (shown by its length only).
#[derive(Default)]
struct RecvBuf(Vec<u8>);

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBuf({} bytes)", self.0.len())
    }
}

impl Client {
    /// Connects to the socket at `path` and handshakes with `hello`.
    ///
    /// A daemon that closes the connection before answering the hello is
    /// on its way out (it stops when idle, or was signalled): the connect
    /// is tried again, a few times, so the caller meets either a daemon
    /// that answers or none at all ([`ClientError::is_no_daemon`]).
    pub fn connect(path: &Path, hello: Hello) -> Result<Self, ClientError> {
        let mut attempts = 0;
        loop {
            let sock = UnixStream::connect(path).map_err(|error| ClientError::Connect {
                path: path.to_path_buf(),
                error,
            })?;
            match Self::handshake(sock, hello.clone()) {
                Err(e) if e.is_closed_before_welcome() && attempts < CONNECT_ATTEMPTS => {
                    attempts += 1;
                    // Give its socket file time to go (10 ms, 20 ms, ...).
                    std::thread::sleep(Duration::from_millis(5 << attempts));
                }
                r => return r,
            }
        }
    }

    /// Handshakes over an already connected socket.
    pub fn handshake(sock: UnixStream, hello: Hello) -> Result<Self, ClientError> {
        no_sigpipe(&sock)?;
        let mut c = Self {
            sock,
            decoder: FrameDecoder::new(MAX_FRAME_LEN),
            fds: VecDeque::new(),
            next_id: 1,
            answers: HashMap::new(),
            pushed: VecDeque::new(),
            recv_buf: RecvBuf::default(),
            welcome: Welcome {
                version: 0,
                daemon: String::new(),
                branch: None,
                session: 0,
            },
        };
        if let Err(e) = c.send_frame(&ClientFrame::Hello(hello), None) {
            // A daemon that refuses a peer outright (another uid) may have
            // closed before the hello went out; its refusal is still there
            // to read.
            return match c.read_frame() {
                Ok((DaemonFrame::Refused(w), _)) => Err(ClientError::Refused(w)),
                _ => Err(e.into()),
            };
        }
        match c.read_frame()? {
            (DaemonFrame::Welcome(w), _) => c.welcome = w,
            (DaemonFrame::Refused(e), _) => return Err(ClientError::Refused(e)),
            (other, _) => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )))
            }
        }
        Ok(c)
    }

    /// What the daemon answered to the handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The connection's socket, taken out of the client (the connection
    /// stays open, handshaken, while the socket lives).
    pub fn into_socket(self) -> UnixStream {
        self.sock
    }

    /// The socket (to poll it, or to set timeouts).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Sets a timeout for every blocking read (`None`: wait forever).
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(d)
    }

    fn send_frame(&mut self, f: &ClientFrame, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let bytes = encode_frame(f, MAX_FRAME_LEN).map_err(|e| match e {
            FrameError::Io(io) => io,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        })?;
        send_all_with_fd(self.sock.as_fd(), &bytes, fd)
    }

    /// The next frame and the fds it carries.
    fn read_frame(&mut self) -> Result<(DaemonFrame, Vec<OwnedFd>), ClientError> {
        if self.recv_buf.0.is_empty() {
            self.recv_buf.0 = vec![0u8; FIRST_RECV_BUF_LEN];
        }
        loop {
            if let Some(f) = self.decoder.next_frame::<DaemonFrame>()? {
                let n = f.fds_carried();
                if self.fds.len() < n {
                    return Err(ClientError::Protocol(format!(
                        "a frame that carries {n} fds came with {}",
                        self.fds.len()
                    )));
                }
                let fds = self.fds.drain(..n).collect();
                return Ok((f, fds));
            }
            let n = recv_with_fds(self.sock.as_fd(), &mut self.recv_buf.0, &mut self.fds)?;
            if n == 0 {
                return Err(match self.decoder.pending() {
                    0 => ClientError::Closed,
                    got => FrameError::Truncated { needed: 0, got }.into(),
                });
            }
            self.decoder.push(&self.recv_buf.0[..n]);
            let len = self.recv_buf.0.len();
            if n == len && len < RECV_BUF_LEN {
                self.recv_buf.0.resize(len * 2, 0);
            }
        }
    }

    /// Reads frames until request `id` is answered, keeping pushed frames
    /// and other answers for later.
    fn answer(&mut self, id: u64) -> Result<Answer, ClientError> {
        loop {
            if let Some(a) = self.answers.remove(&id) {
                return Ok(a);
            }
            match self.read_frame()? {
                (DaemonFrame::Response { id: got, result }, fd) => {
                    self.answers.insert(got, (result, fd));
                }
                (f @ (DaemonFrame::Events(_) | DaemonFrame::CoreEvents(_)), _) => {
                    self.pushed.push_back(f)
                }
                (DaemonFrame::Refused(e), _) => return Err(ClientError::Refused(e)),
                (other, _) => {
                    return Err(ClientError::Protocol(format!("unexpected frame {other:?}")))
                }
            }
        }
    }

    /// Sends a request without waiting for its answer (pipelining);
    /// returns its id for [`Client::wait`].
    pub fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        self.send_with_fd(request, None)
    }

    /// Like [`Client::send`], with an fd in `SCM_RIGHTS` (for a
    /// [`Request::Doorbell`]).
    pub fn send_with_fd(
        &mut self,
        request: Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&ClientFrame::Request { id, request }, fd)?;
        Ok(id)
    }

    /// Waits for the answer to request `id`, and the fd that came with it.
    pub fn wait(&mut self, id: u64) -> Result<(Response, Option<OwnedFd>), ClientError> {
        let (result, fds) = self.answer(id)?;
        result
            .map(|r| (r, fds.into_iter().next()))
            .map_err(ClientError::Daemon)
    }

    /// Sends a request and waits for its response.
    pub fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request)?;
        self.wait(id).map(|(r, _)| r)
    }

    /// Sends a request with an fd and waits for its response.
    pub fn request_with_fd(
        &mut self,
        request: Request,
        fd: BorrowedFd<'_>,
    ) -> Result<Response, ClientError> {
        let id = self.send_with_fd(request, Some(fd))?;
        self.wait(id).map(|(r, _)| r)
    }

    /// `fd_open`: opens a branch file in the daemon and receives the fd.
    pub fn fd_open(&mut self, open: FdOpen) -> Result<(FdOpened, OwnedFd), ClientError> {
        let id = self.send(Request::FdOpen(open))?;
        match self.wait(id)? {
            (Response::FdOpened(o), Some(fd)) => Ok((o, fd)),
            (other, _) => Err(ClientError::Protocol(format!(
                "expected FdOpened with an fd, got {other:?}"
            ))),
        }
    }

    /// `fd_open` that, for an open for writing, also receives the branch's
    /// writer registration (protocol 2, [`Request::FdOpenWithWriter`]):
    /// the file's fd, and the registration's fd when
    /// [`FdOpened::writer`] is set. Close the registration's fd when the
    /// file is closed (after every copy of the file's fd), then call
    /// [`Client::fd_closed`]: no round trip, and a snapshot asked for
    /// after the close (by any process) does not find the branch busy.
    /// A daemon speaking protocol 1 gets a plain [`Request::FdOpen`] (no
    /// registration fd; close with [`Request::FdClose`]).
    pub fn fd_open_with_writer(
        &mut self,
        open: FdOpen,
    ) -> Result<(FdOpened, OwnedFd, Option<OwnedFd>), ClientError> {
        if self.welcome.version < 2 {
            return self.fd_open(open).map(|(o, fd)| (o, fd, None));
        }
        let id = self.send(Request::FdOpenWithWriter(open))?;
        let (result, fds) = self.answer(id)?;
        let mut fds = fds.into_iter();
        match (result.map_err(ClientError::Daemon)?, fds.next(), fds.next()) {
            (Response::FdOpened(o), Some(fd), writer) if o.writer == writer.is_some() => {
                Ok((o, fd, writer))
            }
            (other, ..) => Err(ClientError::Protocol(format!(
                "expected FdOpened with its fds, got {other:?}"
            ))),
        }
    }

    /// Tells the daemon that the file of `record` (opened with
    /// [`Client::fd_open_with_writer`], its registration fd already
    /// closed) is closed. No response: the daemon publishes `Modified` if
    /// the file changed through it.
    pub fn fd_closed(&mut self, record: u64) -> Result<(), ClientError> {
        if self.welcome.version < 2 {
            // A protocol 1 daemon could not decode the frame (and never
            // handed a registration over): the close is an `FdClose`.
            return Err(ClientError::Protocol(format!(
                "FdClosed needs protocol 2; this daemon speaks {}: send FdClose",
                self.welcome.version
            )));
        }
        self.send_frame(&ClientFrame::FdClosed { record }, None)?;
        Ok(())
    }

    /// The next frame the daemon pushed (`Events` or `CoreEvents`),
    /// waiting for one.
    pub fn next_push(&mut self) -> Result<DaemonFrame, ClientError> {
        loop {
            if let Some(f) = self.pushed.pop_front() {
                return Ok(f);
            }
            match self.read_frame()? {
                (f @ (DaemonFrame::Events(_) | DaemonFrame::CoreEvents(_)), _) => return Ok(f),
                (DaemonFrame::Response { id, result }, fd) => {
                    self.answers.insert(id, (result, fd));
                }
                (other, _) => {
                    return Err(ClientError::Protocol(format!("unexpected frame {other:?}")))
                }
            }
        }
    }

    /// A pushed frame already received, without waiting.
    pub fn try_next_push(&mut self) -> Option<DaemonFrame> {
        self.pushed.pop_front()
    }

    /// Acknowledges the outstanding delivery of watcher (`api`,
    /// `instance`), letting the daemon send its next batch.
    pub fn ack(&mut self, api: u32, instance: u64) -> Result<(), ClientError> {
        self.send_frame(&ClientFrame::Ack(Ack { api, instance }), None)?;
        Ok(())
    }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn no_sigpipe(sock: &UnixStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "macos", target_os = "ios")))]
fn no_sigpipe(_sock: &UnixStream) -> io::Result<()> {
    Ok(()) // sends use MSG_NOSIGNAL
}
