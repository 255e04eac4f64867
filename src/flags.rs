//! The flags a command runs with, as `/api/v1/status/flags` reports them: every long
//! flag of the subcommand (and the global ones) with its effective value — given or
//! default — as a string, the way Prometheus and Thanos report theirs.

use clap::{ArgMatches, Command};

/// Flags whose value is inline configuration (objstore YAML with credentials, relabel
/// or endpoint configs): reported as present but never echoed.
fn is_inline_config(long: &str) -> bool {
    (long.ends_with(".config") || long.ends_with("-config"))
        && !long.ends_with("http.config")
        && !long.ends_with("http-config")
}

/// Every long flag of `cmd` with its value in `m` (repeated values joined with `,`,
/// never-set flags without a default as `""`), sorted by name.
pub fn flag_values(cmd: &Command, m: &ArgMatches) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let raw: Vec<String> = match m.try_get_raw(a.get_id().as_str()) {
            Ok(Some(vals)) => vals.map(|v| v.to_string_lossy().into_owned()).collect(),
            _ => Vec::new(),
        };
        let value = if is_inline_config(long) && !raw.iter().all(String::is_empty) {
            "<secret>".to_string()
        } else {
            raw.join(",")
        };
        out.push((long.to_string(), value));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// The flags of the subcommand that `matches` selected, with the global flags of `root`.
pub fn of_subcommand(root: &Command, matches: &ArgMatches) -> Vec<(String, String)> {
    let mut out = flag_values(root, matches);
    if let Some((name, sub_m)) = matches.subcommand()
        && let Some(sub) = root.find_subcommand(name)
    {
        out.extend(flag_values(sub, sub_m));
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::CommandFactory;

    fn flags_of(args: &[&str]) -> std::collections::BTreeMap<String, String> {
        let root = Cli::command();
        let m = root.clone().try_get_matches_from(args).expect("parses");
        of_subcommand(&root, &m).into_iter().collect()
    }

    #[test]
    fn given_and_default_values_and_globals_are_reported() {
        let f = flags_of(&[
            "orrery",
            "query",
            "--endpoint=a:1",
            "--endpoint=b:2",
            "--query.timeout=1m",
        ]);
        assert_eq!(f["endpoint"], "a:1,b:2");
        assert_eq!(f["query.timeout"], "1m");
        assert_eq!(f["http-address"], "0.0.0.0:10902", "defaults too");
        assert_eq!(f["log.format"], "logfmt", "global flags too");
        assert!(!f.contains_key("help"));
    }

    #[test]
    fn inline_configs_are_never_echoed() {
        let yaml = "type: S3\nconfig:\n  secret_key: hunter2";
        let f = flags_of(&["orrery", "standalone", &format!("--objstore.config={yaml}")]);
        assert_eq!(f["objstore.config"], "<secret>");
        assert!(f.values().all(|v| !v.contains("hunter2")));
        let f = flags_of(&["orrery", "standalone"]);
        assert_eq!(f["objstore.config"], "", "unset stays empty");
    }
}
