//! The client side of the control socket: connect, send a request, read its reply (`call`) or
//! its stream of progress frames and final reply (`stream`). Used by zibctl, by zibd's own
//! READY self-check and by the tests, so that no one writes the round trip by hand.
//!
//! Replies are read with a cap ([`MAX_REPLY_FRAME_LEN`], larger than the daemon's for requests:
//! a status reply grows with the datasets): a garbage length prefix from the peer allocates
//! nothing. An `error` reply is a reply, not a
//! [`ClientError`]: what it means for the user is the caller's to say.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use crate::frame::{FrameError, MAX_REPLY_FRAME_LEN, read_frame_capped, write_frame};
use crate::{ProgressUpdate, Request, Response, ResponseFrame, decode_response, encode_request};

/// How long [`Client::call`] waits for a reply unless told otherwise.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a round trip failed (below the level of the daemon's `error` replies).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be opened (see `source.kind()`: not found, refused, permission).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The request could not be written.
    #[error("sending the request: {0}")]
    Send(#[source] FrameError),
    /// No frame arrived in time.
    #[error("no reply within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The peer closed the connection before (or in the middle of) a reply.
    #[error("the connection was closed without an answer")]
    Closed,
    /// Reading from the socket failed.
    #[error("reading the reply: {0}")]
    Read(#[source] io::Error),
    /// The reply frame is over the cap; the connection is out of step.
    #[error("bad reply: {0}")]
    BadFrame(#[source] FrameError),
    /// The reply frame is not a response this build can parse.
    #[error("cannot parse the reply: {0}")]
    Decode(#[source] serde_json::Error),
}

/// One connection to zibd's control socket. Several requests may be sent one after another.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    reply_timeout: Duration,
    peer_protocol: Option<u32>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        Ok(Client { stream, reply_timeout: REPLY_TIMEOUT, peer_protocol: None })
    }

    /// How long [`Client::call`] waits for its reply (default [`REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Client {
        self.reply_timeout = timeout;
        self
    }

    /// The `protocol` of the last frame the daemon sent, once one arrived.
    pub fn peer_protocol(&self) -> Option<u32> {
        self.peer_protocol
    }

    /// The socket itself (tests that write bytes that are not frames).
    pub fn get_mut(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Sends one request.
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        self.send_frame(&encode_request(request)).await
    }

    /// Sends `body` as one frame as it is (tests of how a daemon meets bad frames).
    pub async fn send_frame(&mut self, body: &[u8]) -> Result<(), ClientError> {
        write_frame(&mut self.stream, body).await.map_err(ClientError::Send)
    }

    /// Reads the next frame, waiting at most `timeout` (none: as long as it takes).
    pub async fn recv_frame(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<ResponseFrame, ClientError> {
        let read = read_frame_capped(&mut self.stream, MAX_REPLY_FRAME_LEN);
        let body = match timeout {
            Some(t) => tokio::time::timeout(t, read).await.map_err(|_| ClientError::Timeout(t))?,
            None => read.await,
        };
        let body = match body {
            Ok(Some(body)) => body,
            Ok(None) | Err(FrameError::Truncated { .. }) => return Err(ClientError::Closed),
            Err(FrameError::Io(e)) => return Err(ClientError::Read(e)),
            Err(e) => return Err(ClientError::BadFrame(e)),
        };
        let frame = decode_response(&body).map_err(ClientError::Decode)?;
        self.peer_protocol = Some(frame.protocol);
        Ok(frame)
    }

    /// [`Client::recv_frame`], the response alone.
    pub async fn recv(&mut self, timeout: Option<Duration>) -> Result<Response, ClientError> {
        Ok(self.recv_frame(timeout).await?.response)
    }

    /// One request, one reply (within the reply timeout).
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send(request).await?;
        self.recv(Some(self.reply_timeout)).await
    }

    /// A request answered by progress frames and then a final one (`trigger` with `wait`):
    /// `progress` sees each progress frame; the final frame is returned. `per_frame` bounds the
    /// wait for each frame (none: a run may take as long as it takes).
    pub async fn stream(
        &mut self,
        request: &Request,
        per_frame: Option<Duration>,
        mut progress: impl FnMut(&ProgressUpdate),
    ) -> Result<Response, ClientError> {
        self.send(request).await?;
        loop {
            match self.recv(per_frame).await? {
                Response::Progress(update) => progress(&update),
                last => return Ok(last),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::{decode_request, encode_response};

    fn pair() -> (Client, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Client { stream: a, reply_timeout: REPLY_TIMEOUT, peer_protocol: None }, b)
    }

    #[tokio::test]
    async fn stream_hands_over_progress_and_returns_the_final_frame() {
        let (mut client, mut daemon) = pair();
        let serve = tokio::spawn(async move {
            let body = crate::read_frame(&mut daemon).await.unwrap().unwrap();
            let request = decode_request(&body).unwrap().request;
            let Request::Trigger { dataset, .. } = request else { panic!("{request:?}") };
            for n in ["1", "2"] {
                let update = ProgressUpdate {
                    dataset: dataset.clone(),
                    state: crate::JobState::Uploading,
                    progress: None,
                    message: Some(n.into()),
                };
                let frame = encode_response(&Response::Progress(update));
                write_frame(&mut daemon, &frame).await.unwrap();
            }
            let done = Response::ok("done");
            write_frame(&mut daemon, &encode_response(&done)).await.unwrap();
        });
        let mut seen = Vec::new();
        let request = Request::Trigger { dataset: "tank/a".into(), wait: true, full: false };
        let last = client
            .stream(&request, Some(Duration::from_secs(30)), |p| {
                seen.push(p.message.clone().unwrap())
            })
            .await
            .unwrap();
        assert_eq!(last, Response::ok("done"));
        assert_eq!(seen, ["1", "2"]);
        assert_eq!(client.peer_protocol(), Some(crate::PROTOCOL_VERSION));
        serve.await.unwrap();
    }

    #[tokio::test]
    async fn a_huge_reply_prefix_is_refused_and_a_close_is_closed() {
        let (mut client, mut daemon) = pair();
        daemon.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = client.recv(None).await.unwrap_err();
        assert!(matches!(e, ClientError::BadFrame(FrameError::TooLarge { .. })), "{e:?}");

        let (mut client, mut daemon) = pair();
        daemon.write_all(&[0, 0, 0, 9, b'{']).await.unwrap();
        drop(daemon);
        assert!(matches!(client.recv(None).await, Err(ClientError::Closed)));
    }

    #[tokio::test]
    async fn call_waits_at_most_the_reply_timeout() {
        let (client, _daemon) = pair();
        let mut client = client.with_reply_timeout(Duration::from_millis(10));
        let e = client.call(&Request::Version).await.unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    }
}
