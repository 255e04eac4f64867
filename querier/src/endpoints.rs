//! Endpoint discovery: static addresses, `dns+` names, the Thanos SD file, and a periodic
//! `thanos.info.Info/Info` call per endpoint (external labels, time range, health).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::sdconfig::SdFile;
use netsec::ClientOptions;
use storeapi::wire::info::{InfoRequest, info_client::InfoClient};
use storeapi::{Labels, Matcher};
use tonic::transport::Channel;

/// How often `dns+` names are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(30);

/// What the last Info call said about an endpoint (and whether it answered).
#[derive(Debug, Clone, Default)]
pub struct EndpointStatus {
    pub component_type: String,
    pub label_sets: Vec<Labels>,
    pub min_time: i64,
    pub max_time: i64,
    /// Time of the last Info call, milliseconds since the epoch (0 = never).
    pub last_check_ms: i64,
    pub last_error: Option<String>,
    /// The last Info call succeeded.
    pub healthy: bool,
    /// The endpoint exposes the StoreAPI.
    pub has_store: bool,
    pub supports_without_replica_labels: bool,
    /// The endpoint serves `thanos.Exemplars` (Info's `exemplars` is set).
    pub has_exemplars: bool,
    /// The endpoint serves `thanos.Metadata` (Info's `metric_metadata` is set).
    pub has_metadata: bool,
}

/// One StoreAPI endpoint: its address, a lazily connected channel and its status.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: String,
    pub channel: Channel,
    pub status: RwLock<EndpointStatus>,
    /// The TLS options it was dialled with (an SD file change re-dials it).
    tls_options: ClientOptions,
}

/// HTTP/2 receive windows of a store connection (bytes a store may send unacknowledged).
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

impl Endpoint {
    fn new(
        addr: &str,
        tls: &netsec::ClientTls,
        tls_options: ClientOptions,
    ) -> Result<Endpoint, tonic::transport::Error> {
        let channel = tls.channel(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                // HTTP/2's default 64 KiB receive window would make a store answering
                // thousands of series wait for a window update every few frames.
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW),
        );
        Ok(Endpoint {
            addr: addr.to_string(),
            channel,
            status: RwLock::new(EndpointStatus::default()),
            tls_options,
        })
    }

    pub fn status(&self) -> EndpointStatus {
        match self.status.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_status(&self, s: EndpointStatus) {
        match self.status.write() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }
}

/// Where the endpoint SD config comes from.
#[derive(Debug, Clone)]
pub enum SdSource {
    /// `--endpoint.sd-config-file`: reread when its modification time changes.
    File(PathBuf),
    /// `--endpoint.sd-config`: the YAML itself.
    Inline(String),
}

/// Whether a store with these external label sets may hold series matching `matchers`:
/// some label set must not contradict any matcher (a matcher counts only if the set has
/// that label). No label sets: always a match.
pub fn label_sets_match(label_sets: &[Labels], matchers: &[Matcher]) -> bool {
    if label_sets.is_empty() {
        return true;
    }
    label_sets.iter().any(|ls| {
        matchers.iter().all(|m| match ls.get(&m.name) {
            Some(v) => m.matches(v),
            None => true,
        })
    })
}

/// Whether a store covering `[min_time, max_time]` overlaps the query range.
pub fn time_overlaps(st: &EndpointStatus, start: i64, end: i64) -> bool {
    st.min_time <= end && start <= st.max_time
}

/// Every endpoint the querier knows and how to find more.
#[derive(Debug)]
pub struct EndpointSet {
    specs: Vec<String>,
    sd: Option<SdSource>,
    info_timeout: Duration,
    endpoints: RwLock<BTreeMap<String, Arc<Endpoint>>>,
    state: tokio::sync::Mutex<DiscoveryState>,
    /// `--grpc-client-tls-*`; plaintext by default.
    flag_tls: ClientOptions,
}

#[derive(Debug, Default)]
struct DiscoveryState {
    dns: HashMap<String, (Instant, Vec<String>)>,
    sd_mtime: Option<SystemTime>,
    /// The last SD config that parsed (a broken edit keeps it).
    sd: Option<SdFile>,
    /// One reloading client per distinct set of options in use.
    clients: HashMap<ClientOptions, netsec::ClientTls>,
}

impl EndpointSet {
    pub fn new(specs: Vec<String>, sd_file: Option<PathBuf>, info_timeout: Duration) -> Self {
        EndpointSet {
            specs,
            sd: sd_file.map(SdSource::File),
            info_timeout,
            endpoints: RwLock::new(BTreeMap::new()),
            state: tokio::sync::Mutex::new(DiscoveryState::default()),
            flag_tls: ClientOptions::default(),
        }
    }

    /// Takes the endpoint SD config from `source` (replacing a file given to `new`).
    pub fn with_sd(mut self, source: Option<SdSource>) -> Self {
        self.sd = source;
        self
    }

    /// The `--grpc-client-tls-*` options: how endpoints are dialled unless the SD
    /// config says otherwise. Checked now (files read), so a bad flag is a startup error.
    pub fn with_tls_options(mut self, options: ClientOptions) -> Result<Self, netsec::Error> {
        let client = options.client("grpc-client-tls")?;
        self.state.get_mut().clients.insert(options.clone(), client);
        self.flag_tls = options;
        Ok(self)
    }

    /// All endpoints currently known, by address.
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        match self.endpoints.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        }
    }

    /// Healthy StoreAPI endpoints that may hold data for this selection.
    pub fn select(&self, start: i64, end: i64, matchers: &[Matcher]) -> Vec<Arc<Endpoint>> {
        self.all()
            .into_iter()
            .filter(|e| {
                let st = e.status();
                st.healthy
                    && st.has_store
                    && time_overlaps(&st, start, end)
                    && label_sets_match(&st.label_sets, matchers)
            })
            .collect()
    }

    /// Whether at least one healthy StoreAPI endpoint is known.
    pub fn any_healthy(&self) -> bool {
        self.all().iter().any(|e| {
            let st = e.status();
            st.healthy && st.has_store
        })
    }

    /// Loads the SD config if it is new or changed; a broken one keeps the previous.
    async fn load_sd(&self, state: &mut DiscoveryState) {
        let (text, origin, mtime) = match &self.sd {
            None => return,
            Some(SdSource::Inline(text)) => {
                if state.sd.is_some() {
                    return;
                }
                (text.clone(), "--endpoint.sd-config".to_string(), None)
            }
            Some(SdSource::File(path)) => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if mtime == state.sd_mtime && mtime.is_some() {
                    return;
                }
                match tokio::fs::read_to_string(path).await {
                    Ok(text) => (text, path.display().to_string(), mtime),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot read endpoint SD file");
                        return;
                    }
                }
            }
        };
        match crate::sdconfig::parse(&text, &self.flag_tls) {
            Ok(sd) => {
                if state.sd.as_ref() != Some(&sd) {
                    let addrs: Vec<&str> = sd.targets.iter().map(|t| t.address.as_str()).collect();
                    tracing::info!(source = %origin, endpoints = ?addrs, "endpoint SD config loaded");
                }
                state.sd = Some(sd);
                state.sd_mtime = mtime;
            }
            Err(e) => {
                tracing::warn!(source = %origin, error = %e, "invalid endpoint SD config; keeping the previous endpoints")
            }
        }
    }

    /// Resolves every address source into the current addresses and how to dial each.
    async fn resolve(&self) -> BTreeMap<String, ClientOptions> {
        let mut state = self.state.lock().await;
        self.load_sd(&mut state).await;
        // Addresses from the flags use the SD config's default client config if it
        // sets one, else the flags' TLS.
        let global = state
            .sd
            .as_ref()
            .map_or_else(|| self.flag_tls.clone(), |sd| sd.global.clone());
        let mut specs: Vec<(String, ClientOptions)> = self
            .specs
            .iter()
            .map(|s| (s.clone(), global.clone()))
            .collect();
        if let Some(sd) = &state.sd {
            specs.extend(
                sd.targets
                    .iter()
                    .map(|t| (t.address.clone(), t.tls.clone())),
            );
        }
        let mut out = BTreeMap::new();
        for (spec, tls) in specs {
            if let Some(name) = spec.strip_prefix("dns+") {
                let fresh = state
                    .dns
                    .get(name)
                    .is_some_and(|(at, _)| at.elapsed() < DNS_REFRESH);
                if !fresh {
                    match tokio::net::lookup_host(name).await {
                        Ok(addrs) => {
                            let mut v: Vec<String> = addrs.map(|a| a.to_string()).collect();
                            v.sort();
                            v.dedup();
                            state.dns.insert(name.to_string(), (Instant::now(), v));
                        }
                        Err(e) => {
                            // Keep the previous answer; try again next round.
                            tracing::warn!(name, error = %e, "DNS lookup of endpoint failed");
                        }
                    }
                }
                if let Some((_, v)) = state.dns.get(name) {
                    for a in v {
                        out.entry(a.clone()).or_insert_with(|| tls.clone());
                    }
                }
            } else if !spec.is_empty() {
                out.entry(spec).or_insert(tls);
            }
        }
        out
    }

    /// The (shared, reloading) client for these options, built on first use.
    async fn client_for(
        &self,
        options: &ClientOptions,
    ) -> Result<netsec::ClientTls, netsec::Error> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.clients.get(options) {
            return Ok(c.clone());
        }
        let c = options.client("endpoint client_config tls_config")?;
        state.clients.insert(options.clone(), c.clone());
        Ok(c)
    }

    /// One discovery round: update the address set, then call Info on every endpoint.
    pub async fn refresh(&self) {
        let addrs = self.resolve().await;
        // Endpoints that are new or whose TLS options changed, with their clients (built
        // outside the map's lock: building reads files).
        let current = self.all();
        let mut dial = Vec::new();
        for (a, opts) in &addrs {
            if current
                .iter()
                .any(|e| &e.addr == a && &e.tls_options == opts)
            {
                continue;
            }
            match self.client_for(opts).await {
                Ok(c) => dial.push((a.clone(), opts.clone(), c)),
                // As Thanos: the endpoint is skipped, the others keep working.
                Err(e) => {
                    tracing::error!(addr = %a, error = %e, "skipping endpoint due to TLS configuration error")
                }
            }
        }
        {
            let mut map = match self.endpoints.write() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.retain(|a, e| addrs.get(a) == Some(&e.tls_options));
            for (a, opts, client) in dial {
                match Endpoint::new(&a, &client, opts) {
                    Ok(e) => {
                        tracing::info!(addr = %a, tls = client.is_tls(), "endpoint added");
                        map.insert(a, Arc::new(e));
                    }
                    Err(e) => tracing::warn!(addr = %a, error = %e, "invalid endpoint address"),
                }
            }
        }
        let eps = self.all();
        let calls = eps.into_iter().map(|e| {
            let timeout = self.info_timeout;
            async move {
                let st = info(&e, timeout).await;
                e.set_status(st);
            }
        });
        join_all(calls).await;
    }

    /// Runs discovery every `interval` until `shutdown` fires.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.refresh().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Runs futures concurrently and waits for all (small helper instead of a futures dep).
pub async fn join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Calls Info on one endpoint, keeping the previous labels and time range on failure.
async fn info(e: &Endpoint, timeout: Duration) -> EndpointStatus {
    let mut st = e.status();
    st.last_check_ms = now_ms();
    let mut client = InfoClient::new(e.channel.clone()).max_decoding_message_size(usize::MAX);
    let mut req = tonic::Request::new(InfoRequest {});
    req.set_timeout(timeout);
    let res = tokio::time::timeout(timeout, client.info(req)).await;
    match res {
        Ok(Ok(resp)) => {
            let r = resp.into_inner();
            st.component_type = r.component_type.clone();
            st.label_sets = r
                .label_sets
                .into_iter()
                .filter_map(|ls| storeapi::wire::labels_from_wire(ls.labels).ok())
                .collect();
            st.has_exemplars = r.exemplars.is_some();
            st.has_metadata = r.metric_metadata.is_some();
            match r.store {
                Some(s) => {
                    st.has_store = true;
                    st.min_time = s.min_time;
                    st.max_time = s.max_time;
                    st.supports_without_replica_labels = s.supports_without_replica_labels;
                }
                None => st.has_store = false,
            }
            if !st.healthy {
                tracing::info!(addr = %e.addr, component = %st.component_type, "endpoint healthy");
            }
            st.healthy = true;
            st.last_error = None;
        }
        Ok(Err(status)) => {
            let msg = format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            );
            if st.healthy || st.last_check_ms == 0 {
                tracing::warn!(addr = %e.addr, error = %msg, "endpoint Info failed");
            }
            st.healthy = false;
            st.last_error = Some(msg);
        }
        Err(_) => {
            st.healthy = false;
            st.last_error = Some(format!("Info call timed out after {timeout:?}"));
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::MatchOp;

    #[test]
    fn sd_config_parses_thanos_format() {
        let text = r#"
default_client_config:
  compression: none
endpoints:
  - address: "127.0.0.1:10901"
    strict: false
  - address: dns+receive-headless.ns.svc:10901
"#;
        let addrs = |text: &str| -> Result<Vec<String>, String> {
            crate::sdconfig::parse(text, &ClientOptions::default())
                .map(|f| f.targets.into_iter().map(|t| t.address).collect())
        };
        assert_eq!(
            addrs(text).unwrap(),
            vec!["127.0.0.1:10901", "dns+receive-headless.ns.svc:10901"]
        );
        assert!(addrs("").unwrap().is_empty());
        assert!(addrs("endpoints: 3").is_err());
    }

    #[test]
    fn external_labels_prune() {
        let sets = vec![Labels::from_pairs([("cluster", "a"), ("replica", "0")]).unwrap()];
        let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
        assert!(label_sets_match(
            &sets,
            &[m(MatchOp::Equal, "cluster", "a")]
        ));
        assert!(!label_sets_match(
            &sets,
            &[m(MatchOp::Equal, "cluster", "b")]
        ));
        assert!(label_sets_match(&sets, &[m(MatchOp::Equal, "job", "x")]));
        assert!(!label_sets_match(
            &sets,
            &[m(MatchOp::RegexMatch, "cluster", "b|c")]
        ));
        let two = vec![
            sets[0].clone(),
            Labels::from_pairs([("cluster", "b")]).unwrap(),
        ];
        assert!(label_sets_match(&two, &[m(MatchOp::Equal, "cluster", "b")]));
        assert!(label_sets_match(&[], &[m(MatchOp::Equal, "cluster", "z")]));
    }

    #[test]
    fn time_pruning() {
        let st = EndpointStatus {
            min_time: 100,
            max_time: 200,
            ..Default::default()
        };
        assert!(time_overlaps(&st, 150, 300));
        assert!(time_overlaps(&st, 0, 100));
        assert!(!time_overlaps(&st, 201, 300));
        assert!(!time_overlaps(&st, 0, 99));
    }

    #[tokio::test]
    async fn sd_file_reload_changes_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sd.yaml");
        std::fs::write(&path, "endpoints:\n  - address: 127.0.0.1:1\n").unwrap();
        let set = EndpointSet::new(
            vec!["127.0.0.1:2".into()],
            Some(path.clone()),
            Duration::from_millis(200),
        );
        set.refresh().await;
        let addrs: Vec<String> = set.all().iter().map(|e| e.addr.clone()).collect();
        assert_eq!(addrs, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        // Nobody listens there: unhealthy, with an error.
        assert!(set.all().iter().all(|e| !e.status().healthy));
        assert!(set.all()[0].status().last_error.is_some());
        // Rewrite with a different mtime.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "endpoints:\n  - address: 127.0.0.1:3\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        set.refresh().await;
        let addrs: Vec<String> = set.all().iter().map(|e| e.addr.clone()).collect();
        assert_eq!(addrs, vec!["127.0.0.1:2", "127.0.0.1:3"]);
    }

    #[tokio::test]
    async fn dns_endpoints_resolve() {
        let set = EndpointSet::new(
            vec!["dns+localhost:10999".into()],
            None,
            Duration::from_millis(200),
        );
        set.refresh().await;
        let addrs: Vec<String> = set.all().iter().map(|e| e.addr.clone()).collect();
        assert!(
            addrs
                .iter()
                .any(|a| a == "127.0.0.1:10999" || a == "[::1]:10999"),
            "{addrs:?}"
        );
    }
}
