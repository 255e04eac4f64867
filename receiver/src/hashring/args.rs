//! Command-line flags for hashring routing and replication.
//!
//! `ReceiveArgs` embeds these with `#[command(flatten)] pub hashring: HashringArgs`.

use std::path::PathBuf;
use std::time::Duration;

use super::config::Algorithm;

/// Flags of Thanos Receive's distribution (names as Thanos's).
#[derive(Debug, Clone, clap::Args)]
pub struct HashringArgs {
    /// Path to the hashring JSON file (Thanos format). Re-read when it changes, without
    /// restart. With no hashring (file or inline) the receiver is an ingestor only.
    #[arg(long = "receive.hashrings-file", value_name = "PATH")]
    pub hashrings_file: Option<PathBuf>,

    /// The hashring JSON inline, instead of a file.
    #[arg(
        long = "receive.hashrings",
        value_name = "JSON",
        conflicts_with = "hashrings_file"
    )]
    pub hashrings: Option<String>,

    /// How often the hashring file is checked for changes (Orrery polls; Thanos also uses
    /// fsnotify and re-reads every 5m).
    #[arg(long = "receive.hashrings-file-refresh-interval", default_value = "5s", value_parser = parse_duration)]
    pub hashrings_file_refresh_interval: Duration,

    /// This receiver's own address as written in the hashring (`host:port` of its gRPC
    /// server). With a hashring: set = router+ingestor, unset = router only.
    #[arg(long = "receive.local-endpoint", value_name = "HOST:PORT")]
    pub local_endpoint: Option<String>,

    /// Default placement algorithm of rings that do not name one.
    #[arg(long = "receive.hashrings-algorithm", value_enum, default_value_t = Algorithm::Ketama)]
    pub hashrings_algorithm: Algorithm,

    /// How many receivers store each series. Writes succeed once a quorum did
    /// (RF 2 → 1, else ⌊RF/2⌋+1).
    #[arg(long = "receive.replication-factor", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub replication_factor: u64,

    /// Deadline of one fan-out (all peers of one incoming request).
    #[arg(long = "receive-forward-timeout", default_value = "5s", value_parser = parse_duration)]
    pub forward_timeout: Duration,

    /// Longest pause before a peer that failed as unavailable is tried again (exponential
    /// backoff from 100ms, doubling per consecutive failure).
    #[arg(long = "receive-forward-max-backoff", default_value = "5s", value_parser = parse_duration)]
    pub forward_max_backoff: Duration,

    /// `--remote-write.client-tls-*`: TLS towards the peers forwarded and replicated to.
    #[command(flatten)]
    pub client_tls: netsec::flags::RemoteWriteClientTls,
}

impl Default for HashringArgs {
    fn default() -> Self {
        HashringArgs {
            hashrings_file: None,
            hashrings: None,
            hashrings_file_refresh_interval: Duration::from_secs(5),
            local_endpoint: None,
            hashrings_algorithm: Algorithm::Ketama,
            replication_factor: 1,
            forward_timeout: Duration::from_secs(5),
            forward_max_backoff: Duration::from_secs(5),
            client_tls: Default::default(),
        }
    }
}

/// The role of a receiver (Thanos's `determineMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hashring and local endpoint: routes, replicates and stores its own share.
    RouterIngestor,
    /// Hashring, no local endpoint: stateless router.
    RouterOnly,
    /// No hashring: stores everything it receives.
    IngestorOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::RouterIngestor => "router-ingestor",
            Mode::RouterOnly => "router",
            Mode::IngestorOnly => "ingestor",
        }
    }

    /// Whether this receiver keeps a local TSDB.
    pub fn stores_locally(self) -> bool {
        self != Mode::RouterOnly
    }
}

impl HashringArgs {
    pub fn has_hashring(&self) -> bool {
        self.hashrings_file.is_some() || self.hashrings.is_some()
    }

    pub fn mode(&self) -> Mode {
        match (self.has_hashring(), self.local_endpoint.is_some()) {
            (true, true) => Mode::RouterIngestor,
            (true, false) => Mode::RouterOnly,
            (false, _) => Mode::IngestorOnly,
        }
    }
}

/// Parses Prometheus-style durations: `250ms`, `5s`, `1m30s`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (want e.g. 500ms, 5s, 1m30s)");
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ms = total_ms
            .checked_add(n.checked_mul(unit_ms).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    u64::try_from(total_ms)
        .map(Duration::from_millis)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        h: HashringArgs,
    }

    #[test]
    fn defaults_and_modes() {
        let c = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(c.h.hashrings_algorithm, Algorithm::Ketama);
        assert_eq!(c.h.replication_factor, 1);
        assert_eq!(c.h.mode(), Mode::IngestorOnly);
        assert_eq!(c.h.hashrings_file_refresh_interval, Duration::from_secs(5));

        let c = Cli::try_parse_from([
            "x",
            "--receive.hashrings-file=/tmp/h.json",
            "--receive.local-endpoint=127.0.0.1:10901",
            "--receive.replication-factor=3",
            "--receive.hashrings-algorithm=hashmod",
            "--receive.hashrings-file-refresh-interval=1m30s",
        ])
        .unwrap();
        assert_eq!(c.h.mode(), Mode::RouterIngestor);
        assert_eq!(c.h.replication_factor, 3);
        assert_eq!(c.h.hashrings_algorithm, Algorithm::Hashmod);
        assert_eq!(c.h.hashrings_file_refresh_interval, Duration::from_secs(90));

        let c = Cli::try_parse_from(["x", "--receive.hashrings=[]"]).unwrap();
        assert_eq!(c.h.mode(), Mode::RouterOnly);
        assert!(Cli::try_parse_from(["x", "--receive.replication-factor=0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--receive.hashrings-algorithm=md5"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
