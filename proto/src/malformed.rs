//! Decoding a client frame without trusting it: a body that is not a valid
//! [`ClientFrame`] is classified so the daemon can answer it. A request
//! whose `id` can still be read is answered by that id with a `protocol`
//! error naming what was wrong, and the connection goes on (frames are
//! length-prefixed, so the stream is still in sync). Anything else (no
//! usable id, an unknown frame kind, a malformed `Ack`) has no id to
//! answer by: the daemon sends [`DaemonFrame::Refused`](crate::DaemonFrame)
//! and closes.

use serde::{de::IgnoredAny, Deserialize};

use crate::{decode_body, ClientFrame, WireError};

/// Why a client frame could not be taken, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// A request whose id could be read: answer it by that id with
    /// `error`; the connection stays usable.
    Request {
        /// The request's id.
        id: u64,
        /// What was wrong with it.
        error: WireError,
    },
    /// Nothing to answer by id: refuse with `error` and close.
    Fatal(WireError),
}

/// The outline of a client frame: which kind, and a request's id.
#[derive(Deserialize)]
enum Outline {
    Hello(IgnoredAny),
    Request { id: Id },
    Ack(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Good(u64),
    Bad(IgnoredAny),
}

/// Decodes a client frame body; see the module docs for what a malformed
/// one gives.
pub fn decode_client_frame(body: &[u8]) -> Result<ClientFrame, Malformed> {
    let why = match decode_body::<ClientFrame>(body) {
        Ok(f) => return Ok(f),
        Err(e) => e.to_string(),
    };
    let protocol = |msg: String| WireError::new(WireError::PROTOCOL, msg);
    Err(match decode_body::<Outline>(body) {
        Ok(Outline::Request { id: Id::Good(id) }) => Malformed::Request {
            id,
            error: protocol(format!("request {id} is malformed: {why}")),
        },
        Ok(Outline::Request { id: Id::Bad(_) }) => Malformed::Fatal(protocol(format!(
            "a request's id must be an unsigned integer ({why})"
        ))),
        Ok(Outline::Hello(_)) => Malformed::Fatal(protocol(format!("a malformed Hello: {why}"))),
        Ok(Outline::Ack(_)) => Malformed::Fatal(protocol(format!("a malformed Ack: {why}"))),
        Err(_) => Malformed::Fatal(protocol(format!(
            "not a client frame (Hello, Request or Ack): {why}"
        ))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    fn body(v: &impl serde::Serialize) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn a_good_frame_decodes() {
        let f = ClientFrame::Request {
            id: 3,
            request: Request::Ping,
        };
        assert_eq!(decode_client_frame(&body(&f)), Ok(f));
    }

    #[test]
    fn a_request_with_a_readable_id_is_answered_by_it() {
        #[derive(serde::Serialize)]
        enum Frame {
            Request { id: u64, request: Req },
        }
        #[derive(serde::Serialize)]
        enum Req {
            Fs { branch: Option<String>, op: Op },
        }
        #[derive(serde::Serialize)]
        enum Op {
            Stat { path: u32 },
        }
        let b = body(&Frame::Request {
            id: 9,
            request: Req::Fs {
                branch: None,
                op: Op::Stat { path: 7 },
            },
        });
        match decode_client_frame(&b) {
            Err(Malformed::Request { id: 9, error }) => {
                assert_eq!(error.code, WireError::PROTOCOL);
                assert!(error.message.contains("request 9"), "{error}");
                assert!(error.message.contains("invalid type"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_id_is_fatal() {
        #[derive(serde::Serialize)]
        enum Frame {
            Request { id: i64 },
        }
        let e = decode_client_frame(&body(&Frame::Request { id: -1 })).unwrap_err();
        assert!(
            matches!(&e, Malformed::Fatal(w) if w.message.contains("unsigned integer")),
            "{e:?}"
        );
        let e = decode_client_frame(&body(&"hello")).unwrap_err();
        assert!(matches!(e, Malformed::Fatal(_)), "{e:?}");
    }
}
