//! gRPC clients to peer receivers, with per-peer exponential backoff.
//!
//! A peer that answered `Unavailable` (or could not be reached) is not contacted again until
//! its backoff expires (100ms doubling up to the configured maximum); writes meant for it
//! fail at once as unavailable, so one dead peer costs no forward timeout per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::client::Grpc;
use tonic::transport::Channel;

use super::Failure;
use super::quorum::FailureKind;
use storeapi::wire::BytesCodec;

const REMOTE_WRITE_PATH: &str = "/thanos.WriteableStore/RemoteWrite";

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Largest message a peer may send or receive (Thanos uses `math.MaxInt32`).
pub const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    attempts: u32,
    next_allowed: Option<Instant>,
}

/// Exponential backoff delay after `attempts` consecutive failures.
pub fn backoff_delay(attempts: u32, max: Duration) -> Duration {
    let shift = attempts.saturating_sub(1).min(20);
    INITIAL_BACKOFF.saturating_mul(1u32 << shift).min(max)
}

/// Maps a gRPC status from a peer to a failure kind (Thanos's codes).
pub fn classify(status: &tonic::Status) -> FailureKind {
    match status.code() {
        tonic::Code::AlreadyExists => FailureKind::Conflict,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            FailureKind::Unavailable
        }
        // A bad replica number or other caller error is not going to heal by retrying, but it
        // is not the data's fault either: Thanos treats it as "other" (500).
        _ => FailureKind::Other,
    }
}

/// Connections and backoff state for every peer.
#[derive(Debug)]
pub struct PeerPool {
    clients: Mutex<HashMap<String, Grpc<Channel>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    max_backoff: Duration,
    request_timeout: Duration,
    /// `--remote-write.client-tls-*`: plaintext unless `--remote-write.client-tls-secure`.
    tls: netsec::ClientTls,
}

impl PeerPool {
    pub fn new(request_timeout: Duration, max_backoff: Duration) -> Self {
        PeerPool {
            clients: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            max_backoff,
            request_timeout,
            tls: netsec::ClientTls::plaintext(),
        }
    }

    /// Dials peers with this TLS client (files reloaded per new connection).
    pub fn with_tls(mut self, tls: netsec::ClientTls) -> Self {
        self.tls = tls;
        self
    }

    fn client(&self, address: &str) -> Result<Grpc<Channel>, Failure> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri).map_err(|e| Failure {
            kind: FailureKind::Other,
            message: format!("bad peer address {address:?}: {e}"),
        })?;
        let channel = self.tls.channel(
            endpoint
                .connect_timeout(self.request_timeout.min(Duration::from_secs(5)))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(false),
        );
        let client = Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Whether the peer may be contacted now.
    pub fn is_up(&self, address: &str) -> bool {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match b.get(address).and_then(|s| s.next_allowed) {
            Some(t) => Instant::now() >= t,
            None => true,
        }
    }

    fn mark_unavailable(&self, address: &str) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let s = b.entry(address.to_string()).or_default();
        s.attempts = s.attempts.saturating_add(1);
        s.next_allowed = Some(Instant::now() + backoff_delay(s.attempts, self.max_backoff));
    }

    fn mark_available(&self, address: &str) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.remove(address);
    }

    /// Number of peers currently backing off.
    pub fn backing_off(&self) -> usize {
        let now = Instant::now();
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.values()
            .filter(|s| s.next_allowed.is_some_and(|t| t > now))
            .count()
    }

    /// Forgets peers that are not in `keep` (after a hashring change).
    pub fn retain(&self, keep: &[String]) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a, _| keep.contains(a));
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a, _| keep.contains(a));
    }

    /// Sends one batch to a peer: an encoded `thanos.WriteRequest`
    /// ([`storeapi::wire::remote_write::encode_forwarded`]).
    pub async fn remote_write(&self, address: &str, req: Bytes) -> Result<(), Failure> {
        if !self.is_up(address) {
            return Err(Failure {
                kind: FailureKind::Unavailable,
                message: format!(
                    "backing off forward request for endpoint {address}: target not available"
                ),
            });
        }
        let mut client = self.client(address)?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(self.request_timeout);
        let call = async {
            client.ready().await.map_err(|e| {
                tonic::Status::unavailable(format!("connecting to endpoint {address}: {e}"))
            })?;
            client
                .unary(
                    request,
                    http::uri::PathAndQuery::from_static(REMOTE_WRITE_PATH),
                    BytesCodec,
                )
                .await
        };
        let result = tokio::time::timeout(self.request_timeout, call).await;
        match result {
            Ok(Ok(_)) => {
                self.mark_available(address);
                Ok(())
            }
            Ok(Err(status)) => {
                let kind = classify(&status);
                if status.code() == tonic::Code::Unavailable {
                    self.mark_unavailable(address);
                }
                Err(Failure {
                    kind,
                    message: format!(
                        "forwarding request to endpoint {address}: {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                })
            }
            Err(_) => Err(Failure {
                kind: FailureKind::Unavailable,
                message: format!(
                    "forwarding request to endpoint {address}: timed out after {:?}",
                    self.request_timeout
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff_delay(1, max), Duration::from_millis(100));
        assert_eq!(backoff_delay(2, max), Duration::from_millis(200));
        assert_eq!(backoff_delay(4, max), Duration::from_millis(800));
        assert_eq!(backoff_delay(10, max), max);
        assert_eq!(backoff_delay(u32::MAX, max), max);
    }

    #[test]
    fn codes_map_like_thanos() {
        assert_eq!(
            classify(&tonic::Status::already_exists("x")),
            FailureKind::Conflict
        );
        assert_eq!(
            classify(&tonic::Status::unavailable("x")),
            FailureKind::Unavailable
        );
        assert_eq!(
            classify(&tonic::Status::deadline_exceeded("x")),
            FailureKind::Unavailable
        );
        assert_eq!(classify(&tonic::Status::internal("x")), FailureKind::Other);
        assert_eq!(
            classify(&tonic::Status::invalid_argument("x")),
            FailureKind::Other
        );
    }

    #[tokio::test]
    async fn unreachable_peer_backs_off() {
        // A port nothing listens on: connection refused → Unavailable → backoff.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = PeerPool::new(Duration::from_secs(2), Duration::from_secs(5));
        let err = pool.remote_write(&addr, Bytes::new()).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Unavailable, "{}", err.message);
        assert!(!pool.is_up(&addr));
        assert_eq!(pool.backing_off(), 1);
        let err = pool.remote_write(&addr, Bytes::new()).await.unwrap_err();
        assert!(err.message.contains("backing off"), "{}", err.message);
    }
}
