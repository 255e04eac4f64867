//! The one `orrery` binary: wires subcommands to the service crates.

mod flags;
mod logging;
mod standalone;
mod tools;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orrery",
    version,
    about = "A global view over many Prometheus servers"
)]
struct Cli {
    /// Log filter: debug, info, warn or error [default: RUST_LOG when set, else info].
    #[arg(long = "log.level", global = true, value_enum)]
    log_level: Option<logging::LogLevel>,
    /// Log line format: logfmt or json (one object per line). Written to stderr; colour
    /// only when stderr is a terminal.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = logging::LogFormat::Logfmt)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Parsed once at startup, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Accept Prometheus remote write and serve it over the Thanos StoreAPI.
    Receive(receiver::ReceiveArgs),
    /// Fan queries out over StoreAPI endpoints and serve the Prometheus HTTP API and UI.
    Query(querier::QueryArgs),
    /// Serve an object-storage bucket's blocks over the StoreAPI (Thanos's store gateway).
    Store(store::StoreArgs),
    /// Serve a Prometheus over the StoreAPI and ship its blocks (Thanos's sidecar).
    Sidecar(sidecar::SidecarArgs),
    /// Reconcile ReceiveCluster and GlobalView resources on Kubernetes.
    Operator(operator::OperatorArgs),
    /// Compact, deduplicate and apply retention to a bucket of blocks (Thanos's compactor).
    Compact(compact::CompactArgs),
    /// Receiver + querier in one process with defaults: the quickest way to a global view.
    Standalone(standalone::StandaloneArgs),
    /// Utilities: `tools bucket ls|inspect|verify|mark|upload-blocks` (Thanos's names).
    Tools(tools::ToolsArgs),
}

fn main() -> anyhow::Result<()> {
    let root = Cli::command();
    let matches = root.clone().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let flag_values = flags::of_subcommand(&root, &matches);
    match &mut cli.command {
        Command::Query(args) => args.flag_values = flag_values,
        Command::Standalone(args) => args.flag_values = flag_values,
        _ => {}
    }
    if matches!(cli.command, Command::Store(_)) {
        // Before any thread: the gateway's freed query buffers go back to the OS
        // instead of staying in glibc's arenas (issue #16, see store::heap).
        store::heap::tune();
    }
    if matches!(cli.command, Command::Receive(_)) {
        // Before any thread: the head's chunks, appended on many request threads and
        // freed at each head truncation, stay in fewer arenas (issue #26, tsdb::heap).
        tsdb::heap::limit_arenas(tsdb::heap::RECEIVE_ARENAS);
    }
    logging::init(cli.log_level, cli.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Receive(args) => receiver::run(args).await,
            Command::Query(args) => querier::run(args).await,
            Command::Store(args) => store::run(args).await,
            Command::Sidecar(args) => sidecar::run(args).await,
            Command::Operator(args) => operator::run(args).await,
            Command::Compact(args) => compact::run(args).await,
            Command::Standalone(args) => standalone::run(args).await,
            Command::Tools(args) => tools::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_flags_are_accepted_on_every_subcommand() {
        for sub in [
            "receive",
            "query",
            "sidecar",
            "operator",
            "compact",
            "standalone",
        ] {
            for args in [
                vec!["orrery", sub, "--log.level=debug", "--log.format=json"],
                vec!["orrery", "--log.format=logfmt", "--log.level=warn", sub],
            ] {
                let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
                assert!(cli.log_level.is_some(), "{args:?}");
            }
            let cli = Cli::try_parse_from(["orrery", sub]).unwrap();
            assert_eq!(cli.log_level, None);
            assert_eq!(cli.log_format, logging::LogFormat::Logfmt);
            assert!(Cli::try_parse_from(["orrery", sub, "--log.format=text"]).is_err());
            assert!(Cli::try_parse_from(["orrery", sub, "--log.level=verbose"]).is_err());
        }
    }
}
