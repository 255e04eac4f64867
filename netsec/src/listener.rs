//! A TCP listener handing out plaintext or TLS streams, for axum and tonic alike.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::server::ServerConfigSource;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; beyond it `accept` waits (back-pressure, not unbounded
/// tasks).
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// What is known about a connection: its peer and, over TLS, the client's certificate
/// chain (leaf first) when it sent one.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    pub peer_certificates: Option<Arc<[CertificateDer<'static>]>>,
}

/// One accepted connection.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn info(&self) -> ConnInfo {
        match self {
            Stream::Plain(s) => ConnInfo {
                remote_addr: s.peer_addr().ok(),
                peer_certificates: None,
            },
            Stream::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                ConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    peer_certificates: conn
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect()),
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

/// Accepts connections; over TLS the handshakes run in their own tasks and finished
/// streams are queued, so one slow or hostile client never blocks the others.
#[derive(Debug)]
pub struct Listener {
    local: io::Result<SocketAddr>,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Plain(TcpListener),
    Tls(mpsc::Receiver<Stream>),
}

impl Listener {
    /// `tls: None` serves plaintext exactly as a bare `TcpListener` would (with
    /// TCP_NODELAY). With a config source, every connection gets the source's current
    /// config, so rotated files apply to new connections only.
    pub fn new(tcp: TcpListener, tls: Option<Arc<dyn ServerConfigSource>>) -> Listener {
        let local = tcp.local_addr();
        let inner = match tls {
            None => Inner::Plain(tcp),
            Some(src) => {
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(accept_tls(tcp, src, tx));
                Inner::Tls(rx)
            }
        };
        Listener { local, inner }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// The next connection (retries accept errors such as EMFILE after a pause).
    pub async fn next(&mut self) -> Stream {
        match &mut self.inner {
            Inner::Plain(l) => loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(error = %e, "could not set TCP_NODELAY");
                        }
                        return Stream::Plain(s);
                    }
                    Err(e) => accept_error(e).await,
                }
            },
            Inner::Tls(rx) => match rx.recv().await {
                Some(s) => s,
                // The accept task only ends when the receiver is gone; never here.
                None => std::future::pending().await,
            },
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming*`.
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = Result<Stream, io::Error>> + Send + 'static {
        futures_util::stream::unfold(self, |mut l| async move {
            let s = l.next().await;
            Some((Ok(s), l))
        })
    }
}

async fn accept_error(e: io::Error) {
    tracing::warn!(error = %e, "accept failed; retrying");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_tls(tcp: TcpListener, src: Arc<dyn ServerConfigSource>, tx: mpsc::Sender<Stream>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let (sock, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => { accept_error(e).await; continue; }
            },
            _ = tx.closed() => return,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // Picked per connection: a rotated certificate serves the next handshake.
        let acceptor = tokio_rustls::TlsAcceptor::from(src.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => {
                    let _ = tx.send(Stream::Tls(Box::new(s))).await;
                }
                Ok(Err(e)) => tracing::info!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(peer = %peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Stream, ConnInfo) {
        let s = self.next().await;
        let info = s.info();
        (s, info)
    }

    fn local_addr(&self) -> io::Result<ConnInfo> {
        match &self.local {
            Ok(a) => Ok(ConnInfo {
                remote_addr: Some(*a),
                peer_certificates: None,
            }),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Lets a router served from a [`Listener`] read the connection's [`ConnInfo`] (peer
/// address, client certificate) with `into_make_service_with_connect_info::<ConnInfo>()`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> ConnInfo {
        stream.remote_addr().clone()
    }
}
