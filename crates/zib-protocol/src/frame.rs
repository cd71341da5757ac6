//! Length-prefixed frames: a `u32` big-endian byte count, then that many bytes of JSON.
//!
//! The count is checked against a cap ([`MAX_FRAME_LEN`]) *before* anything is allocated, so a
//! garbage prefix (say `0xFFFFFFFF`) costs nothing. After [`FrameError::TooLarge`] the stream is
//! out of step (the body was not read): the reader must answer with an error and close.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request frame body, in bytes (1 MiB): what the daemon reads from a client. A
/// request is a few hundred bytes; anything larger is garbage or abuse.
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;

/// The largest reply frame body, in bytes (16 MiB): what a client reads from the daemon. A
/// status reply costs about 250 bytes a dataset (251,219 bytes for 1,000), so the request cap
/// would break `zibctl status` at about 4,000 datasets; this one at about 60,000.
pub const MAX_REPLY_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is above the cap. The body was not read; close the connection.
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    /// The stream ended inside a frame (after `got` of `expected` bytes, prefix included).
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    /// The frame body is not the JSON expected.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame body. `Ok(None)` means the peer closed the stream cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_capped(reader, MAX_FRAME_LEN).await
}

/// [`read_frame`] with a custom cap (tests, or a peer that wants a smaller one).
pub async fn read_frame_capped<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { got, expected: 4 })
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge { len: u64::from(len), max });
    }
    let len = len as usize;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = reader.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got: 4 + got, expected: 4 + len });
        }
        got += n;
    }
    Ok(Some(body))
}

/// Writes one frame (prefix and body in one write) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    // The larger cap: a reader enforces its own (a daemon reads requests up to MAX_FRAME_LEN).
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_REPLY_FRAME_LEN)
        .ok_or(FrameError::TooLarge { len: body.len() as u64, max: MAX_REPLY_FRAME_LEN })?;
    // Prefix and body apart: a status reply shared by many connections is not copied for each.
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await?;
    Ok(())
}

/// Serializes `value` as JSON and writes it as one frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value)?;
    write_frame(writer, &body).await
}

/// Reads one frame and parses it as JSON. `Ok(None)` on a clean end of stream.
pub async fn read_json<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> Result<Option<T>, FrameError> {
    match read_frame(reader).await? {
        None => Ok(None),
        Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, b"hello").await.unwrap();
            write_frame(&mut a, b"").await.unwrap();
        });
        assert_eq!(read_frame(&mut b).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut b).await.unwrap().unwrap(), b"");
        writer.await.unwrap();
        assert!(read_frame(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn huge_prefix_is_refused_without_allocating() {
        let mut data: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF, b'x'];
        match read_frame(&mut data).await {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn cap_is_inclusive() {
        let mut data = (MAX_FRAME_LEN).to_be_bytes().to_vec();
        data.resize(4 + MAX_FRAME_LEN as usize, b' ');
        let mut r: &[u8] = &data;
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap().len(), MAX_FRAME_LEN as usize);
        let mut over: &[u8] = &(MAX_FRAME_LEN + 1).to_be_bytes();
        assert!(matches!(read_frame(&mut over).await, Err(FrameError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn truncated_prefix_and_body() {
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated { got: 2, expected: 4 })
        ));
        let mut r: &[u8] = &[0, 0, 0, 10, b'{', b'"'];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated { got: 6, expected: 14 })
        ));
    }

    #[tokio::test]
    async fn write_refuses_oversized_body() {
        let body = vec![b' '; MAX_REPLY_FRAME_LEN as usize + 1];
        let mut sink = Vec::new();
        assert!(matches!(write_frame(&mut sink, &body).await, Err(FrameError::TooLarge { .. })));
        assert!(sink.is_empty());
        // A reply above the request cap is written (and read with the reply cap).
        let body = vec![b' '; MAX_FRAME_LEN as usize + 1];
        write_frame(&mut sink, &body).await.unwrap();
        let mut r = sink.as_slice();
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::TooLarge { .. })));
        let mut r = sink.as_slice();
        let back = read_frame_capped(&mut r, MAX_REPLY_FRAME_LEN).await.unwrap().unwrap();
        assert_eq!(back.len(), body.len());
    }

    #[tokio::test]
    async fn json_helpers() {
        let mut buf = Vec::new();
        write_json(&mut buf, &vec![1u32, 2, 3]).await.unwrap();
        assert_eq!(&buf[..4], &7u32.to_be_bytes());
        let mut r: &[u8] = &buf;
        let v: Vec<u32> = read_json(&mut r).await.unwrap().unwrap();
        assert_eq!(v, [1, 2, 3]);
        let mut bad: &[u8] = &[0, 0, 0, 1, b'{'];
        assert!(matches!(read_json::<_, Vec<u32>>(&mut bad).await, Err(FrameError::Json(_))));
    }
}
