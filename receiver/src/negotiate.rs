//! Which remote-write protocol a request speaks, from its `Content-Type` and
//! `Content-Encoding`, as Prometheus's write handler decides it (the
//! `X-Prometheus-Remote-Write-Version` header is ignored, as Prometheus ignores it).
//!
//! Differences from Prometheus 3.5.3, on purpose: the media type and the `proto`
//! parameter are compared case-insensitively and whitespace around `;` and `=` is
//! trimmed (Prometheus reads `...; proto=...` with a space as 1.0, silently), and a 415
//! really ends the request (3.5.3 writes the 415 and goes on decoding).

/// The remote-write message a request body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request`.
    V2,
}

/// The `proto` parameter values.
pub const PROTO_V1: &str = "prometheus.WriteRequest";
pub const PROTO_V2: &str = "io.prometheus.write.v2.Request";

/// Why a request cannot be read: answered with 415 Unsupported Media Type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error(
        "unsupported Content-Type {0:?}: remote write takes application/x-protobuf (proto={PROTO_V1} or proto={PROTO_V2})"
    )]
    ContentType(String),
    #[error(
        "unsupported remote-write message proto={0:?} in Content-Type: this receiver accepts {PROTO_V1} and {PROTO_V2}"
    )]
    Proto(String),
    #[error(
        "unsupported Content-Encoding {0:?}: remote write bodies must be snappy (block format)"
    )]
    Encoding(String),
}

/// Decides the protocol from the two header values (`None` when absent; a value that is
/// not visible ASCII is passed as `Some` of its lossy text and refused).
pub fn protocol(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<Protocol, NegotiationError> {
    if let Some(enc) = content_encoding
        && !enc.trim().eq_ignore_ascii_case("snappy")
    {
        return Err(NegotiationError::Encoding(enc.to_string()));
    }
    let Some(ct) = content_type.map(str::trim).filter(|c| !c.is_empty()) else {
        // Prometheus: an absent Content-Type is 1.0.
        return Ok(Protocol::V1);
    };
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(NegotiationError::ContentType(ct.to_string()));
    }
    let mut proto = Protocol::V1;
    for p in parts {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        let value = value.trim().trim_matches('"');
        proto = if value.eq_ignore_ascii_case(PROTO_V1) {
            Protocol::V1
        } else if value.eq_ignore_ascii_case(PROTO_V2) {
            Protocol::V2
        } else {
            return Err(NegotiationError::Proto(value.to_string()));
        };
    }
    Ok(proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let p = |ct: Option<&str>| protocol(ct, Some("snappy"));
        assert_eq!(p(None), Ok(Protocol::V1));
        assert_eq!(p(Some("")), Ok(Protocol::V1));
        assert_eq!(p(Some("application/x-protobuf")), Ok(Protocol::V1));
        assert_eq!(
            p(Some("application/x-protobuf;proto=prometheus.WriteRequest")),
            Ok(Protocol::V1)
        );
        assert_eq!(
            p(Some(
                "application/x-protobuf;proto=io.prometheus.write.v2.Request"
            )),
            Ok(Protocol::V2)
        );
        assert_eq!(
            p(Some(
                "  Application/X-Protobuf ; Proto = io.prometheus.write.v2.request  "
            )),
            Ok(Protocol::V2)
        );
        assert_eq!(
            p(Some(
                "application/x-protobuf;charset=utf-8;proto=\"io.prometheus.write.v2.Request\""
            )),
            Ok(Protocol::V2)
        );
        assert_eq!(
            p(Some("application/x-protobuf;junk")),
            Ok(Protocol::V1),
            "a parameter without '=' is ignored"
        );
        let e = p(Some(
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        ))
        .unwrap_err();
        assert_eq!(
            e,
            NegotiationError::Proto("io.prometheus.write.v3.Request".into())
        );
        assert!(
            e.to_string()
                .contains("accepts prometheus.WriteRequest and")
        );
        let e = p(Some("application/json")).unwrap_err();
        assert!(matches!(e, NegotiationError::ContentType(_)), "{e}");
        assert!(matches!(
            p(Some(
                "application/x-protobuffer;proto=prometheus.WriteRequest"
            )),
            Err(NegotiationError::ContentType(_))
        ));
    }

    #[test]
    fn encodings() {
        let ct = Some("application/x-protobuf");
        assert_eq!(protocol(ct, None), Ok(Protocol::V1));
        assert_eq!(protocol(ct, Some(" Snappy ")), Ok(Protocol::V1));
        for bad in ["gzip", "", "snappy, gzip", "zstd"] {
            assert_eq!(
                protocol(ct, Some(bad)),
                Err(NegotiationError::Encoding(bad.into()))
            );
        }
    }
}
