//! zib-protocol: the control-socket protocol between `zibd` and `zibctl`.
//!
//! # Wire format
//!
//! A connection carries frames in both directions: a `u32` big-endian length, then that many
//! bytes of UTF-8 JSON; at most [`MAX_FRAME_LEN`] (1 MiB) per request frame and [`MAX_REPLY_FRAME_LEN`] (16 MiB) per reply. See [`frame`];
//! [`Client`] is the one client side (connect, call, stream) that zibctl, zibd's self-check and
//! the tests use.
//!
//! The client sends [`RequestFrame`]s, the daemon answers each with one [`ResponseFrame`], except
//! `Trigger { wait: true }`, answered by any number of `progress` frames and then one final frame
//! (`done`, or `error`). Several requests may be sent one after another on one connection; the
//! daemon closes a connection idle for longer than its read timeout.
//!
//! ```json
//! {"protocol":1,"request":{"type":"trigger","dataset":"tank/photos","wait":true}}
//! {"protocol":1,"response":{"type":"progress","dataset":"tank/photos","state":"uploading",...}}
//! {"protocol":1,"response":{"type":"done","ok":true,"message":"backed up ..."}}
//! ```
//!
//! # Versioning
//!
//! Every frame carries the sender's [`PROTOCOL_VERSION`] in `protocol`; there is no handshake,
//! so a one-shot client needs one round trip. The version is bumped only for an *incompatible*
//! change (a field removed, renamed or re-typed, a meaning changed). Compatible changes keep it:
//!
//! - a new request type: an older daemon answers `error` with kind `unsupported` (the connection
//!   stays usable) — see [`decode_request`];
//! - a new optional field: older peers ignore it, newer peers read its absence as the default
//!   (every field added after v1 must carry `#[serde(default)]`);
//! - a new response type or enum value: older clients read it as `Unknown` (`#[serde(other)]`).
//!
//! A daemon answers a frame whose `protocol` is outside
//! [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`] with an `unsupported` error that names both
//! versions. The JSON of every v1 message is kept as a fixture under `tests/fixtures/v1/` and must
//! keep parsing forever (`tests/backward_compat.rs`).

pub mod client;
pub mod frame;
pub mod message;

pub use client::{Client, ClientError, REPLY_TIMEOUT};
pub use frame::{
    FrameError, MAX_FRAME_LEN, MAX_REPLY_FRAME_LEN, read_frame, read_frame_capped, read_json,
    write_frame, write_json,
};
pub use message::{
    DaemonInfo, DatasetStatus, DrillStatus, DrillSummary, DrillTrigger, ErrorKind, JobState,
    LastError, LastSuccess, ProgressUpdate, Request, Response, RestoreJobStatus, RestoreStart,
    RestoreState, RestoreTier, RunNote, RunProgress, VerifySummary, VerifyTrigger,
};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bumped only for incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest protocol version a daemon of this build still answers.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The default control socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/run/zibd/zibd.sock";

/// A request as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    pub request: Request,
}

impl RequestFrame {
    /// Wraps `request` with this build's protocol version.
    pub fn new(request: Request) -> Self {
        RequestFrame { protocol: PROTOCOL_VERSION, request }
    }
}

/// A response as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    pub response: Response,
}

impl ResponseFrame {
    /// Wraps `response` with this build's protocol version.
    pub fn new(response: Response) -> Self {
        ResponseFrame { protocol: PROTOCOL_VERSION, response }
    }
}

/// Why a request frame was refused; the daemon sends it back as
/// `Response::Error { kind, message }` and keeps the connection open (the frame boundary is
/// intact).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Rejected {
    pub kind: ErrorKind,
    pub message: String,
}

impl Rejected {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Rejected { kind, message: message.into() }
    }

    /// The error reply to send.
    pub fn into_response(self) -> Response {
        Response::Error { kind: self.kind, message: self.message }
    }
}

/// Parses a request frame body, telling apart (as the daemon must answer them):
/// not JSON or not a request object → `invalid_request`; a protocol version outside
/// [`MIN_PROTOCOL_VERSION`]`..=`[`PROTOCOL_VERSION`] or a request type this build does not know →
/// `unsupported`; a known type with bad fields → `invalid_request`.
pub fn decode_request(body: &[u8]) -> Result<RequestFrame, Rejected> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Rejected::new(ErrorKind::InvalidRequest, format!("frame is not valid JSON: {e}"))
    })?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(Rejected::new(ErrorKind::InvalidRequest, "frame is not a JSON object"));
    };
    let protocol = obj.get("protocol").and_then(serde_json::Value::as_u64).ok_or_else(|| {
        Rejected::new(ErrorKind::InvalidRequest, "frame has no numeric \"protocol\" field")
    })?;
    if protocol < u64::from(MIN_PROTOCOL_VERSION) || protocol > u64::from(PROTOCOL_VERSION) {
        return Err(Rejected::new(
            ErrorKind::Unsupported,
            format!(
                "client speaks protocol {protocol}, this zibd speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; \
                 use a zibctl of the same release as zibd"
            ),
        ));
    }
    let request = obj.remove("request").ok_or_else(|| {
        Rejected::new(ErrorKind::InvalidRequest, "frame has no \"request\" field")
    })?;
    // serde would also take an array whose first element is the tag (`["status"]`): only the
    // object form is the protocol.
    if !request.is_object() {
        return Err(Rejected::new(ErrorKind::InvalidRequest, "\"request\" is not a JSON object"));
    }
    let type_name = request.get("type").and_then(serde_json::Value::as_str).map(str::to_owned);
    match serde_json::from_value::<Request>(request) {
        Ok(request) => Ok(RequestFrame { protocol: protocol as u32, request }),
        Err(e) => match type_name {
            Some(t) if !Request::KNOWN_TYPES.contains(&t.as_str()) => Err(Rejected::new(
                ErrorKind::Unsupported,
                format!(
                    "unknown request type {t:?}: this zibd (protocol {PROTOCOL_VERSION}) does not support it; is zibctl newer than zibd?"
                ),
            )),
            _ => Err(Rejected::new(ErrorKind::InvalidRequest, format!("bad request: {e}"))),
        },
    }
}

/// Parses a response frame body (client side). Unknown response types and enum values from a
/// newer daemon parse as their `Unknown` variants.
///
/// A status reply, the one that grows with the datasets, is read straight into its fields when
/// it starts as [`encode_response`] writes it (`{"protocol":N,"response":{"type":"status",`).
/// The derived reading of an internally tagged enum first copies the whole reply into a tree of
/// owned values (it cannot know that the tag comes first) and then reads that tree: that was
/// most of the CPU of 50 `zibctl status` at once with 1,000 datasets. Any other reply, and a
/// status that the direct reading refuses, takes the derived path, so the errors are its own.
pub fn decode_response(body: &[u8]) -> Result<ResponseFrame, serde_json::Error> {
    #[derive(Deserialize)]
    struct StatusFrame {
        protocol: u32,
        response: StatusReply,
    }
    /// [`Response::Status`]'s fields; its `type` key is ignored like any unknown one.
    #[derive(Deserialize)]
    struct StatusReply {
        daemon: DaemonInfo,
        datasets: Vec<DatasetStatus>,
    }
    if starts_as_status_reply(body)
        && let Ok(StatusFrame { protocol, response: StatusReply { daemon, datasets } }) =
            serde_json::from_slice(body)
    {
        return Ok(ResponseFrame { protocol, response: Response::Status { daemon, datasets } });
    }
    serde_json::from_slice(body)
}

/// Whether `body` begins as [`encode_response`] writes a status reply.
fn starts_as_status_reply(body: &[u8]) -> bool {
    let Some(rest) = body.strip_prefix(br#"{"protocol":"#) else { return false };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(br#","response":{"type":"status","#)
}

/// Serializes a request frame body.
pub fn encode_request(request: &Request) -> Vec<u8> {
    serde_json::to_vec(&RequestFrame::new(request.clone())).expect("a Request always serializes")
}

/// Serializes a response frame body.
pub fn encode_response(response: &Response) -> Vec<u8> {
    /// [`ResponseFrame`]'s wire form over a borrowed response: a status reply of 1,000 datasets
    /// is not copied to be sent.
    #[derive(Serialize)]
    struct Borrowed<'a> {
        protocol: u32,
        response: &'a Response,
    }
    serde_json::to_vec(&Borrowed { protocol: PROTOCOL_VERSION, response })
        .expect("a Response always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_tells_garbage_from_unknown() {
        let r = decode_request(b"\x00\x01garbage").unwrap_err();
        assert_eq!(r.kind, ErrorKind::InvalidRequest);
        let r = decode_request(b"[1,2]").unwrap_err();
        assert_eq!(r.kind, ErrorKind::InvalidRequest);
        let r = decode_request(br#"{"request":{"type":"version"}}"#).unwrap_err();
        assert_eq!(r.kind, ErrorKind::InvalidRequest);
        let r =
            decode_request(br#"{"protocol":1,"request":{"type":"frobnicate","x":1}}"#).unwrap_err();
        assert_eq!(r.kind, ErrorKind::Unsupported);
        assert!(r.message.contains("frobnicate"), "{}", r.message);
        let r = decode_request(br#"{"protocol":1,"request":{"type":"trigger"}}"#).unwrap_err();
        assert_eq!(r.kind, ErrorKind::InvalidRequest);
        assert!(r.message.contains("dataset"), "{}", r.message);
        let r = decode_request(br#"{"protocol":1,"request":{"dataset":"a"}}"#).unwrap_err();
        assert_eq!(r.kind, ErrorKind::InvalidRequest);
        let r = decode_request(br#"{"protocol":99,"request":{"type":"version"}}"#).unwrap_err();
        assert_eq!(r.kind, ErrorKind::Unsupported);
        assert!(r.message.contains("99"), "{}", r.message);
        let r = decode_request(br#"{"protocol":0,"request":{"type":"version"}}"#).unwrap_err();
        assert_eq!(r.kind, ErrorKind::Unsupported);
    }

    #[test]
    fn decode_accepts_defaults_and_extra_fields() {
        let f = decode_request(br#"{"protocol":1,"request":{"type":"trigger","dataset":"t/a","new_field":3},"extra":1}"#)
            .unwrap();
        assert_eq!(f.request, Request::Trigger { dataset: "t/a".into(), wait: false, full: false });
        let f = decode_request(br#"{"protocol":1,"request":{"type":"pause"}}"#).unwrap();
        assert_eq!(f.request, Request::Pause { dataset: None });
    }

    #[test]
    fn known_types_match_variants() {
        let all = [
            Request::Status { dataset: None },
            Request::Trigger { dataset: "a".into(), wait: false, full: false },
            Request::Pause { dataset: None },
            Request::Resume { dataset: None },
            Request::Cancel { dataset: "a".into() },
            Request::Reload,
            Request::Version,
            Request::RestoreStart(RestoreStart {
                dataset: "a".into(),
                snapshot: None,
                to: "b".into(),
                tier: RestoreTier::Bulk,
                days: 1,
                bucket: None,
                prefix: None,
                mountpoint: None,
                no_mount: false,
                key_location: None,
            }),
            Request::RestoreStatus { id: None },
            Request::RestoreCancel { id: "b".into() },
            Request::Cost { dataset: None },
            Request::PruneNow { dataset: None, dry_run: true },
            Request::Verify { dataset: None, deep: true },
            Request::RestoreDrill {
                dataset: "a".into(),
                snapshot: None,
                yes: false,
                tier: RestoreTier::Bulk,
            },
        ];
        assert_eq!(all.len(), Request::KNOWN_TYPES.len());
        for r in all {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["type"], r.type_name());
            assert!(Request::KNOWN_TYPES.contains(&r.type_name()));
        }
    }

    #[test]
    fn mutating_classification() {
        assert!(!Request::Status { dataset: None }.is_mutating());
        assert!(!Request::Version.is_mutating());
        assert!(!Request::RestoreStatus { id: None }.is_mutating());
        assert!(Request::RestoreCancel { id: "b".into() }.is_mutating());
        assert!(Request::Reload.is_mutating());
        assert!(Request::Trigger { dataset: "a".into(), wait: true, full: false }.is_mutating());
        assert!(Request::Pause { dataset: None }.is_mutating());
        assert!(Request::Resume { dataset: None }.is_mutating());
        assert!(Request::Cancel { dataset: "a".into() }.is_mutating());
        // Both make paid S3 requests; a prune (not a dry run) deletes.
        assert!(Request::Cost { dataset: None }.is_mutating());
        assert!(Request::PruneNow { dataset: None, dry_run: true }.is_mutating());
        // A drill restores (and may thaw, which is billed).
        let drill = Request::RestoreDrill {
            dataset: "a".into(),
            snapshot: None,
            yes: false,
            tier: RestoreTier::Bulk,
        };
        assert!(drill.is_mutating());
    }
}
