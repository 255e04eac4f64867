//! `orrery compact`: Thanos's compactor for a bucket of TSDB blocks.
//!
//! - [`planner`]: groups, Thanos's leveled plan (2h → 8h → 2d → 14d), retention — pure.
//! - [`compactor`]: one pass over the bucket (compaction with vertical merging and
//!   replica deduplication, garbage collection, retention, the blocks cleaner, aborted
//!   partial uploads), crash-safe by ordering.
//! - [`metrics`]: the `thanos_compact_*` metrics.
//!
//! The merging itself is the tsdb crate's ([`tsdb::block::merge_blocks`]).

#[cfg(test)]
mod bucket_tests;
pub mod compactor;
pub mod metrics;
pub mod planner;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Args};
use prometheus_client::registry::Registry;

pub use compactor::{CompactConfig, Compactor, PassReport};
pub use metrics::CompactMetrics;

/// Flags of `orrery compact`, named as Thanos's `thanos compact`.
#[derive(Args, Debug, Clone)]
pub struct CompactArgs {
    /// Object storage YAML file (Thanos's format: `type: S3|GCS|AZURE|FILESYSTEM`).
    #[arg(
        long = "objstore.config-file",
        value_name = "FILE",
        conflicts_with = "objstore_config"
    )]
    pub objstore_config_file: Option<PathBuf>,
    /// The objstore YAML itself, instead of --objstore.config-file.
    #[arg(long = "objstore.config", value_name = "YAML")]
    pub objstore_config: Option<String>,
    /// Scratch space for downloaded and merged blocks, and the meta cache.
    #[arg(long = "data-dir", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keep running, one pass every --wait-interval; without it one pass, then exit.
    #[arg(long = "wait", short = 'w', num_args = 0..=1, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub wait: bool,
    /// Pause between passes with --wait.
    #[arg(long = "wait-interval", default_value = "5m", value_parser = parse_duration)]
    pub wait_interval: Duration,
    /// Minimum age of a non-compactor block before it is compacted (eventual
    /// consistency of listings).
    #[arg(long = "consistency-delay", default_value = "30m", value_parser = parse_duration)]
    pub consistency_delay: Duration,
    /// How long a block marked for deletion stays before the cleaner deletes it (readers
    /// hide it earlier). 0 deletes at once.
    #[arg(long = "delete-delay", default_value = "48h", value_parser = parse_duration)]
    pub delete_delay: Duration,
    /// Retention of raw blocks (0d: forever).
    #[arg(long = "retention.resolution-raw", default_value = "0d", value_parser = parse_duration)]
    pub retention_raw: Duration,
    /// Retention of 5m downsampled blocks (0d: forever).
    #[arg(long = "retention.resolution-5m", default_value = "0d", value_parser = parse_duration)]
    pub retention_5m: Duration,
    /// Retention of 1h downsampled blocks (0d: forever).
    #[arg(long = "retention.resolution-1h", default_value = "0d", value_parser = parse_duration)]
    pub retention_1h: Duration,
    /// Do not downsample. Otherwise each pass, after compaction, downsamples raw
    /// blocks spanning ≥ 40h to 5m and 5m blocks spanning ≥ 10d to 1h (Thanos's
    /// AggrChunk encoding), skipping blocks with `no-downsample-mark.json`.
    #[arg(long = "downsampling.disable", num_args = 0..=1, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub downsampling_disable: bool,
    /// External label naming replicas (repeatable or comma-separated): removed from
    /// block labels so replicas compact together, their identical samples kept once.
    #[arg(long = "deduplication.replica-label", value_delimiter = ',')]
    pub replica_labels: Vec<String>,
    /// Deduplication of overlapping samples: "" (1:1, identical samples kept once; right
    /// for receive replication) or "penalty" (each overlapping block is a replica, folded
    /// with the querier's penalty algorithm: for HA Prometheus pairs whose samples differ
    /// in timestamps; needs --deduplication.replica-label; irreversible).
    #[arg(long = "deduplication.func", default_value = "")]
    pub dedup_func: String,
    /// Relabel rules (`keep`, `drop`, `hashmod`) over each block's external labels
    /// (minus the dedup replica labels) and `__block_id`: a block they drop is neither
    /// compacted, downsampled, retained nor cleaned by this compactor, so several
    /// compactors can share one bucket with `hashmod` shards, one group per shard.
    #[arg(
        long = "selector.relabel-config",
        value_name = "YAML",
        conflicts_with = "selector_relabel_config_file"
    )]
    pub selector_relabel_config: Option<String>,
    /// Path to the relabel rules YAML (alternative to --selector.relabel-config).
    #[arg(long = "selector.relabel-config-file", value_name = "PATH")]
    pub selector_relabel_config_file: Option<PathBuf>,
    /// Groups compacted in parallel.
    #[arg(long = "compact.concurrency", default_value_t = 1)]
    pub concurrency: usize,
    /// Listen address for /metrics, /-/healthy and /-/ready.
    #[arg(long = "http-address", default_value = "0.0.0.0:10902")]
    pub http_address: SocketAddr,
    /// `--http.config`: TLS and basic auth for the `--http-address` listener.
    #[command(flatten)]
    pub http_config: netsec::flags::HttpConfig,
    /// Hash function for the files of compacted blocks: "" (none) or "SHA256" (each
    /// chunk segment's and the index's hash in meta.json's thanos.files, as Thanos).
    #[arg(long = "hash-func", default_value = "", value_name = "\"\"|SHA256")]
    pub hash_func: objstore::HashFunc,
}

/// Thanos's (Prometheus model) durations: `30m`, `48h`, `0d`, `2w`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (want e.g. 30s, 5m, 48h, 14d, 1w)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(n.checked_mul(ms).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    u64::try_from(total)
        .map(Duration::from_millis)
        .map_err(|_| bad())
}

impl CompactArgs {
    /// Checks the flags as Thanos does at startup.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.dedup()?;
        if !self.downsampling_disable {
            if !self.retention_raw.is_zero() && self.retention_raw < Duration::from_secs(40 * 3600)
            {
                bail!(
                    "--retention.resolution-raw must be at least 40h (or 0d) when downsampling is enabled"
                );
            }
            if !self.retention_5m.is_zero() && self.retention_5m < Duration::from_secs(10 * 86400) {
                bail!(
                    "--retention.resolution-5m must be at least 10d (or 0d) when downsampling is enabled"
                );
            }
        }
        if self.concurrency == 0 {
            bail!("--compact.concurrency must be at least 1");
        }
        Ok(())
    }

    /// The block selector of `--selector.relabel-config(-file)`.
    pub fn selector(&self) -> anyhow::Result<objstore::Selector> {
        objstore::Selector::from_flags(
            self.selector_relabel_config.as_deref(),
            self.selector_relabel_config_file.as_deref(),
        )
        .context("invalid --selector.relabel-config")
    }

    /// `--deduplication.func`, checked as Thanos does.
    pub fn dedup(&self) -> anyhow::Result<tsdb::block::DedupFunc> {
        match self.dedup_func.as_str() {
            "" => Ok(tsdb::block::DedupFunc::OneToOne),
            "penalty" if self.replica_labels.is_empty() => bail!(
                "--deduplication.func=penalty needs at least one --deduplication.replica-label"
            ),
            "penalty" => Ok(tsdb::block::DedupFunc::Penalty),
            other => bail!("--deduplication.func={other:?}: want \"\" or \"penalty\""),
        }
    }

    /// The compactor's settings.
    pub fn config(&self) -> anyhow::Result<CompactConfig> {
        Ok(CompactConfig {
            selector: self.selector()?,
            dedup: self.dedup()?,
            data_dir: self.data_dir.clone(),
            consistency_delay: self.consistency_delay,
            delete_delay: self.delete_delay,
            retention: [self.retention_raw, self.retention_5m, self.retention_1h],
            replica_labels: self.replica_labels.clone(),
            concurrency: self.concurrency,
            downsampling: !self.downsampling_disable,
        })
    }
}

/// Runs the compactor: one pass (or, with `--wait`, a pass every `--wait-interval`
/// until SIGINT/SIGTERM), serving /metrics, /-/healthy and /-/ready meanwhile.
pub async fn run(args: CompactArgs) -> anyhow::Result<()> {
    args.validate()?;
    let config = args.config()?;
    let cfg = objstore::BucketConfig::from_flags(
        args.objstore_config_file.as_deref(),
        args.objstore_config.as_deref(),
    )?
    .context("orrery compact needs --objstore.config or --objstore.config-file")?;
    let mut registry = Registry::default();
    let bucket = objstore::Bucket::new(&cfg, Some(&mut registry))?;
    let metrics = CompactMetrics::default();
    metrics.register(&mut registry);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let registry = Arc::new(Mutex::new(registry));
    let ready = Arc::new(AtomicBool::new(false));
    let http_sec = args.http_config.server().context("--http.config")?;
    let listener = tokio::net::TcpListener::bind(args.http_address)
        .await
        .with_context(|| format!("binding --http-address {}", args.http_address))?;
    tracing::info!(address = %args.http_address, "listening for /metrics and probes");
    let router = http_sec.router(netsec::ops::flag_ops_router(
        registry,
        Arc::clone(&ready),
        "starting",
    ));
    let listener = http_sec.listener(listener);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    let compactor =
        Arc::new(Compactor::new(bucket, config, metrics).with_hash_func(args.hash_func));
    ready.store(true, Ordering::Release);
    run_loop(&compactor, args.wait, args.wait_interval).await
}

/// Passes until done (`wait` false: one pass, its error returned) or a signal arrives.
pub async fn run_loop(
    compactor: &Arc<Compactor>,
    wait: bool,
    interval: Duration,
) -> anyhow::Result<()> {
    loop {
        let started = std::time::Instant::now();
        match compactor.run_once().await {
            Ok(r) => tracing::info!(took = ?started.elapsed(), compactions = r.compactions,
                marked_no_compact = r.marked_no_compact, garbage_collected = r.garbage_collected,
                retention_marked = r.retention_marked, deleted = r.deleted,
                partial_deleted = r.partial_deleted, failed_groups = r.failed_groups,
                downsampled = r.downsampled, downsample_failures = r.downsample_failures,
                "compaction pass done"),
            Err(e) if wait => {
                tracing::error!(error = %e, "compaction pass failed; retrying after --wait-interval")
            }
            Err(e) => return Err(e.into()),
        }
        if !wait {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: CompactArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("0d").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "5", "m", "5x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thanos_flags_parse_with_defaults() {
        let c = Cli::try_parse_from(["x", "--objstore.config=type: FILESYSTEM"])
            .unwrap()
            .a;
        assert!(!c.wait);
        assert_eq!(c.consistency_delay, Duration::from_secs(1800));
        assert_eq!(c.delete_delay, Duration::from_secs(48 * 3600));
        assert_eq!(c.http_address.port(), 10902);
        let c = Cli::try_parse_from([
            "x",
            "--wait",
            "--deduplication.replica-label=receive_replica",
            "--deduplication.replica-label",
            "replica,prometheus_replica",
            "--downsampling.disable",
            "--retention.resolution-raw=30d",
        ])
        .unwrap()
        .a;
        assert!(c.wait && c.downsampling_disable);
        assert_eq!(
            c.replica_labels,
            ["receive_replica", "replica", "prometheus_replica"]
        );
        c.validate().unwrap();
        let c = Cli::try_parse_from(["x", "--wait=false"]).unwrap().a;
        assert!(!c.wait);
        let c = Cli::try_parse_from(["x", "--deduplication.func=penalty"])
            .unwrap()
            .a;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("replica-label")
        );
        let c = Cli::try_parse_from([
            "x",
            "--deduplication.func=penalty",
            "--deduplication.replica-label=replica",
        ])
        .unwrap()
        .a;
        c.validate().unwrap();
        assert_eq!(c.config().unwrap().dedup, tsdb::block::DedupFunc::Penalty);
        let c = Cli::try_parse_from(["x", "--deduplication.func=chain"])
            .unwrap()
            .a;
        assert!(c.validate().is_err());
        let c = Cli::try_parse_from([
            "x",
            "--selector.relabel-config=- action: keep\n  source_labels: [tenant]\n  regex: a\n",
        ])
        .unwrap()
        .a;
        let cfg = c.config().unwrap();
        let keeps = |t: &str| {
            let l = [("tenant".to_string(), t.to_string())].into();
            cfg.selector.keeps_block("01A", &l, &[])
        };
        assert!(keeps("a") && !keeps("b"));
        let c = Cli::try_parse_from(["x", "--selector.relabel-config=- action: replace\n"])
            .unwrap()
            .a;
        let e = c.config().unwrap_err();
        assert!(
            format!("{e:#}").contains("selector.relabel-config"),
            "{e:#}"
        );
        let c = Cli::try_parse_from(["x", "--retention.resolution-raw=1d"])
            .unwrap()
            .a;
        assert!(c.validate().is_err());
    }
}
