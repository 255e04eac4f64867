//! `orrery tools bucket …`: Thanos's bucket tools (`thanos tools bucket`), same
//! subcommand and flag names: `ls`, `inspect`, `verify`, `mark`, `upload-blocks`.
//! The logic lives in the `objstore` crate; this is the command-line edge.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use objstore::{Bucket, BucketConfig};

#[derive(Args)]
pub struct ToolsArgs {
    #[command(subcommand)]
    command: ToolsCommand,
}

#[derive(Subcommand)]
enum ToolsCommand {
    /// Bucket utility commands.
    Bucket(BucketArgs),
}

#[derive(Args)]
struct BucketArgs {
    /// Object storage configuration file (Thanos's objstore YAML).
    #[arg(
        long = "objstore.config-file",
        value_name = "FILE",
        global = true,
        conflicts_with = "objstore_config"
    )]
    objstore_config_file: Option<PathBuf>,
    /// The objstore YAML itself, instead of --objstore.config-file.
    #[arg(long = "objstore.config", value_name = "YAML", global = true)]
    objstore_config: Option<String>,
    #[command(subcommand)]
    command: BucketCommand,
}

#[derive(Subcommand)]
enum BucketCommand {
    /// List all blocks in the bucket.
    Ls(LsArgs),
    /// Inspect all blocks in the bucket in a detailed, table-like way.
    Inspect(InspectArgs),
    /// Verify all blocks in the bucket: meta.json, files and sizes, file hashes when
    /// listed, index, chunk references, overlaps. Every problem is printed; the exit code is non-zero when
    /// there is any.
    Verify(VerifyArgs),
    /// Mark blocks for deletion, no-compact or no-downsample (a marker already present
    /// is kept, as Thanos does).
    Mark(MarkArgs),
    /// Upload the blocks of a Prometheus data directory to the bucket.
    UploadBlocks(UploadArgs),
}

#[derive(Args)]
struct MarkArgs {
    /// The blocks to mark (repeatable).
    #[arg(long = "id", value_name = "ULID", required = true)]
    ids: Vec<String>,
    /// The marker to put.
    #[arg(long = "marker", value_parser = [objstore::markers::DELETION_MARK, objstore::markers::NO_COMPACT_MARK, objstore::markers::NO_DOWNSAMPLE_MARK])]
    marker: String,
    /// Human-readable details put into the marker (required unless --remove).
    #[arg(long = "details", default_value = "")]
    details: String,
    /// Remove the marker instead.
    #[arg(long = "remove")]
    remove: bool,
}

#[derive(Args)]
struct LsArgs {
    /// Output: "" (ULIDs), wide (one line per block), json (each block's meta.json).
    #[arg(short = 'o', long = "output", default_value = "")]
    output: String,
    /// Exclude blocks marked for deletion.
    #[arg(long = "exclude-delete")]
    exclude_delete: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum TableFormat {
    Table,
    Csv,
    Tsv,
}

#[derive(Args)]
struct InspectArgs {
    /// Only blocks with this external label, `key="value"` (repeatable; all must match).
    #[arg(short = 'l', long = "selector", value_name = "key=\"value\"", value_parser = parse_label)]
    selector: Vec<(String, String)>,
    /// Sort by these columns in turn (ULID, FROM, UNTIL, RANGE, UNTIL-DOWN, #SERIES,
    /// #SAMPLES, #CHUNKS, COMP-LEVEL, COMP-FAILED, LABELS, RESOLUTION, SOURCE).
    #[arg(long = "sort-by", default_values_t = ["FROM".to_string(), "UNTIL".to_string()])]
    sort_by: Vec<String>,
    /// Output format.
    #[arg(long = "output", value_enum, default_value_t = TableFormat::Table)]
    output: TableFormat,
}

#[derive(Args)]
struct VerifyArgs {
    /// Only these blocks (repeatable); all when none is given.
    #[arg(long = "id", value_name = "ULID")]
    ids: Vec<String>,
}

#[derive(Args)]
struct UploadArgs {
    /// The data directory whose blocks are uploaded.
    #[arg(long = "path", alias = "tsdb.path", default_value = "./data")]
    path: PathBuf,
    /// External label `key="value"` of the uploaded blocks (repeatable, at least one).
    #[arg(long = "label", value_name = "key=\"value\"", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Hash function for the files of uploaded blocks: "" (none) or "SHA256" (each chunk
    /// segment's and the index's hash goes into meta.json's thanos.files, as Thanos's
    /// --hash-func writes it; `verify` checks them).
    #[arg(long = "hash-func", default_value = "", value_name = "\"\"|SHA256")]
    hash_func: objstore::HashFunc,
}

/// A `key="value"` flag, parsed as the receiver's `--label` (Thanos's syntax).
fn parse_label(s: &str) -> Result<(String, String), receiver::args::LabelFlagError> {
    receiver::parse_label_flag(s).map(|l| (l.name.to_string(), l.value.to_string()))
}

fn label_map(labels: &[(String, String)]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for (k, v) in labels {
        if m.insert(k.clone(), v.clone()).is_some() {
            bail!("label {k} given twice");
        }
    }
    Ok(m)
}

pub async fn run(args: ToolsArgs) -> anyhow::Result<()> {
    match args.command {
        ToolsCommand::Bucket(b) => bucket(b).await,
    }
}

async fn bucket(args: BucketArgs) -> anyhow::Result<()> {
    let cfg = BucketConfig::from_flags(
        args.objstore_config_file.as_deref(),
        args.objstore_config.as_deref(),
    )
    .context("invalid --objstore.config / --objstore.config-file")?
    .context("no bucket: give --objstore.config-file FILE or --objstore.config YAML")?;
    let bucket = Bucket::new(&cfg, None).context("setting up the bucket")?;
    // Fail at once, naming the endpoint, instead of after minutes of retries.
    bucket
        .check(std::time::Duration::from_secs(10))
        .await
        .context("the bucket is not usable")?;
    match args.command {
        BucketCommand::Ls(a) => ls(&bucket, a).await,
        BucketCommand::Inspect(a) => inspect(&bucket, a).await,
        BucketCommand::Verify(a) => verify(&bucket, a).await,
        BucketCommand::Mark(a) => mark(&bucket, a).await,
        BucketCommand::UploadBlocks(a) => upload(&bucket, a).await,
    }
}

async fn mark(bucket: &Bucket, a: MarkArgs) -> anyhow::Result<()> {
    use objstore::markers::{self, DeletionMark, NoCompactMark, NoDownsampleMark};
    let ids = a
        .ids
        .iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("--id {s:?} is not a ULID"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !a.remove && a.details.is_empty() {
        bail!("required flag --details not provided");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for id in ids {
        let key = format!("{id}/{}", a.marker);
        if a.remove {
            bucket
                .delete(&key)
                .await
                .with_context(|| format!("removing {key}"))?;
            tracing::info!(block = %id, marker = %a.marker, "marker removed");
            continue;
        }
        // Thanos's reason for marks put by hand.
        let written = match a.marker.as_str() {
            markers::DELETION_MARK => {
                markers::write_marker(bucket, &DeletionMark::new(id, a.details.clone(), now)).await
            }
            markers::NO_COMPACT_MARK => {
                markers::write_marker(
                    bucket,
                    &NoCompactMark::new(id, "manual", a.details.clone(), now),
                )
                .await
            }
            _ => {
                markers::write_marker(
                    bucket,
                    &NoDownsampleMark::new(id, "manual", a.details.clone(), now),
                )
                .await
            }
        }
        .with_context(|| format!("writing {key}"))?;
        if written {
            tracing::info!(block = %id, marker = %a.marker, "block marked");
        } else {
            tracing::warn!(block = %id, marker = %a.marker, "marker already present: kept as it is");
        }
    }
    Ok(())
}

async fn ls(bucket: &Bucket, a: LsArgs) -> anyhow::Result<()> {
    if !matches!(a.output.as_str(), "" | "wide" | "json") {
        bail!("--output {:?}: expected \"\", wide or json", a.output);
    }
    let d = objstore::discovery::MetaFetcher::new(bucket.clone(), None)
        .fetch()
        .await
        .context("listing the bucket")?;
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    for e in d.blocks.values() {
        if a.exclude_delete && e.deletion_mark.is_some() {
            continue;
        }
        n += 1;
        match a.output.as_str() {
            "wide" => writeln!(out, "{}", objstore::inspect::wide_line(&e.meta))?,
            "json" => out.write_all(&objstore::block::encode_meta(&e.meta)?)?,
            _ => writeln!(out, "{}", e.meta.ulid)?,
        }
    }
    tracing::info!(objects = n, "ls done");
    Ok(())
}

async fn inspect(bucket: &Bucket, a: InspectArgs) -> anyhow::Result<()> {
    let selector = label_map(&a.selector)?;
    let d = objstore::discovery::MetaFetcher::new(bucket.clone(), None)
        .fetch()
        .await
        .context("listing the bucket")?;
    let rows =
        objstore::inspect::inspect_rows(d.blocks.values().map(|e| &e.meta), &selector, &a.sort_by)
            .map_err(anyhow::Error::msg)?;
    let text = match a.output {
        TableFormat::Table => objstore::inspect::table(&rows),
        TableFormat::Csv => objstore::inspect::delimited(&rows, ','),
        TableFormat::Tsv => objstore::inspect::delimited(&rows, '\t'),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

async fn verify(bucket: &Bucket, a: VerifyArgs) -> anyhow::Result<()> {
    let ids = a
        .ids
        .iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("--id {s:?} is not a ULID"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scratch = tempdir_for("verify")?;
    let r = objstore::verify::verify_bucket(bucket, &scratch, &ids).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let r = r.context("listing the bucket")?;
    let mut out = std::io::stdout().lock();
    for p in &r.problems {
        writeln!(out, "{p}")?;
    }
    if r.problems.is_empty() {
        tracing::info!(blocks = r.blocks_checked, "verify: no problems");
        Ok(())
    } else {
        bail!(
            "verify: {} problem(s) in {} block(s) checked",
            r.problems.len(),
            r.blocks_checked
        )
    }
}

async fn upload(bucket: &Bucket, a: UploadArgs) -> anyhow::Result<()> {
    let labels = label_map(&a.labels)?;
    if labels.is_empty() {
        bail!(
            "no external labels: give at least one --label 'key=\"value\"' that tells these blocks apart from every other producer's"
        );
    }
    if !a.path.is_dir() {
        bail!("--path {}: not a directory", a.path.display());
    }
    let r = objstore::upload::upload_blocks(bucket, &a.path, &labels, a.hash_func).await?;
    for (id, why) in &r.refused {
        eprintln!("refused block {id}: {why}");
    }
    tracing::info!(
        uploaded = r.uploaded.len(),
        already_present = r.present.len(),
        empty = r.empty.len(),
        refused = r.refused.len(),
        "upload-blocks done"
    );
    if !r.refused.is_empty() {
        bail!(
            "{} block(s) refused (overlapping blocks already in the bucket)",
            r.refused.len()
        );
    }
    Ok(())
}

/// A fresh private directory under the system temp dir.
fn tempdir_for(what: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("orrery-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
