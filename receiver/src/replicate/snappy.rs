//! Thanos's `snappy` gRPC compression on the server side.
//!
//! Thanos routers forward with `grpc-encoding: snappy`, which is the snappy *framing*
//! (stream) format (klauspost's buffered writer), not block snappy. tonic only knows gzip,
//! deflate and zstd and rejects other encodings, so [`SnappyDecompress`] wraps a service:
//! for a `snappy` request it reads the (unary) body, decompresses every compressed gRPC
//! message, marks it uncompressed and drops the `grpc-encoding` header before tonic sees it.
//! Responses go out uncompressed, which every gRPC client accepts.

use std::convert::Infallible;
use std::io::Read;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use super::BoxFuture;

/// gRPC message header: compressed flag (1 byte) + big-endian length (4 bytes).
const HEADER: usize = 5;

/// Rewrites a gRPC body of length-prefixed messages, decompressing snappy-framed ones.
/// `max_message` bounds every decompressed message.
pub fn decompress_grpc_body(body: &[u8], max_message: usize) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(body.len() * 2);
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err("truncated gRPC message header".into());
        }
        let compressed = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = rest
            .get(HEADER..HEADER + len)
            .ok_or_else(|| format!("truncated gRPC message: header says {len} bytes"))?;
        rest = &rest[HEADER + len..];
        let message = match compressed {
            0 => payload.to_vec(),
            1 => decompress_framed(payload, max_message)?,
            f => return Err(format!("bad gRPC compressed flag {f}")),
        };
        let len = u32::try_from(message.len())
            .map_err(|_| "decompressed message too large".to_string())?;
        out.put_u8(0);
        out.put_u32(len);
        out.extend_from_slice(&message);
    }
    Ok(out.freeze())
}

/// Decompresses snappy framing format, refusing output beyond `max`.
pub fn decompress_framed(data: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    snap::read::FrameDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("snappy-framed decompression failed: {e}"))?;
    if out.len() > max {
        return Err(format!("decompressed gRPC message exceeds {max} bytes"));
    }
    Ok(out)
}

/// Compresses with the snappy framing format (what a Thanos client sends).
pub fn compress_framed(data: &[u8]) -> Vec<u8> {
    let mut enc = snap::write::FrameEncoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut enc, data);
    enc.into_inner().unwrap_or_default()
}

/// Wraps a tonic service so it also accepts `grpc-encoding: snappy` requests.
#[derive(Debug, Clone)]
pub struct SnappyDecompress<S> {
    inner: S,
    max_message: usize,
}

impl<S> SnappyDecompress<S> {
    pub fn new(inner: S, max_message: usize) -> Self {
        SnappyDecompress { inner, max_message }
    }
}

impl<S: NamedService> NamedService for SnappyDecompress<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for SnappyDecompress<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let snappy = req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"snappy"));
        if !snappy {
            return Box::pin(self.inner.call(req));
        }
        // The ready service is the one polled; take it and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max_message;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            parts.headers.remove("grpc-encoding");
            // A compressed message is at most as large as its content plus framing overhead.
            let limit = max.saturating_add(max / 8).saturating_add(1024);
            let raw = match Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return Ok(tonic::Status::resource_exhausted(format!(
                        "reading snappy request body: {e}"
                    ))
                    .into_http());
                }
            };
            let plain = match decompress_grpc_body(&raw, max) {
                Ok(b) => b,
                Err(e) => return Ok(tonic::Status::internal(e).into_http()),
            };
            let req = http::Request::from_parts(parts, Body::new(Full::new(plain)));
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn roundtrip_messages() {
        let msg = b"hello hello hello hello hello world".repeat(100);
        let compressed = compress_framed(&msg);
        // The stream identifier chunk of the framing format.
        assert_eq!(&compressed[..10], b"\xff\x06\x00\x00sNaPpY");
        let mut body = frame(1, &compressed);
        body.extend(frame(0, b"plain"));
        let out = decompress_grpc_body(&body, 1 << 20).unwrap();
        let mut want = frame(0, &msg);
        want.extend(frame(0, b"plain"));
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn rejects_garbage_and_bombs() {
        assert!(decompress_grpc_body(&frame(1, b"not snappy"), 1024).is_err());
        assert!(decompress_grpc_body(&[0, 0, 0], 1024).is_err());
        assert!(decompress_grpc_body(&frame(2, b""), 1024).is_err());
        let mut short = frame(0, b"abc");
        short.truncate(6);
        assert!(decompress_grpc_body(&short, 1024).is_err());
        let big = vec![0u8; 10_000];
        let err = decompress_grpc_body(&frame(1, &compress_framed(&big)), 1000).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
    }
}
