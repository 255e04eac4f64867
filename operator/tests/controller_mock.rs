//! Controller tests against a mocked Kubernetes API (tower-test): each test plays an
//! API server that checks every request the reconciler makes, in order, and answers it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource};
use operator::controller::{Context, global_view, receive};
use operator::crd::{
    ClusterMode, ClusterSpec, ClusterStatus, ConfigMapRef, GlobalView, GlobalViewSpec,
    GlobalViewStatus, HashringAlgorithm, PrometheusRef, ReceiveCluster, ReceiveClusterSelector,
    ReceiveClusterSpec, ReceiveClusterStatus, RemoteClusterSecretRef, SecretKeySelector,
    SidecarSpec, StorageSpec,
};
use operator::metrics::Metrics;
use operator::probe::{BoxFut, Probe, ProbeError};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// One request seen by the fake API server.
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
    send: SendResponse<Response<Body>>,
}

async fn next(handle: &mut ApiHandle) -> Seen {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the reconciler stopped making requests")
        .expect("request");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Seen {
        method,
        path,
        query,
        body,
        send,
    }
}

/// Expects a request with `method` on `path`, returning it.
async fn expect(handle: &mut ApiHandle, method: Method, path: &str) -> Seen {
    let s = next(handle).await;
    assert_eq!(
        (&s.method, s.path.as_str()),
        (&method, path),
        "unexpected request (query {:?}, body {})",
        s.query,
        s.body
    );
    s
}

fn respond(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Asserts a server-side apply by Orrery's field manager, and echoes the applied
/// object back (plus `extra` merged at the top level).
async fn expect_apply(handle: &mut ApiHandle, path: &str, extra: Value) -> Value {
    let s = expect(handle, Method::PATCH, path).await;
    assert!(
        s.query.contains("fieldManager=orrery-operator") && s.query.contains("force=true"),
        "not an SSA with our field manager: {}",
        s.query
    );
    let mut obj = s.body.clone();
    if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), extra) {
        o.extend(e);
    }
    respond(s.send, 200, &obj);
    s.body
}

struct FakeProbe {
    age: Option<f64>,
    /// URLs `reload()` was called with.
    reloads: std::sync::Mutex<Vec<String>>,
    /// What `loaded_config()` answers (the configuration Prometheus runs).
    loaded: std::sync::Mutex<String>,
}

impl Probe for FakeProbe {
    fn last_sample_age<'a>(
        &'a self,
        base_url: &'a str,
        _cluster: &'a str,
    ) -> BoxFut<'a, Result<Option<f64>, ProbeError>> {
        assert_eq!(base_url, "http://global-query.orrery.svc:10902");
        let age = self.age;
        Box::pin(async move { Ok(age) })
    }
    fn reload<'a>(&'a self, url: &'a str) -> BoxFut<'a, Result<(), ProbeError>> {
        self.reloads.lock().unwrap().push(url.to_string());
        Box::pin(async { Ok(()) })
    }
    fn loaded_config<'a>(&'a self, _url: &'a str) -> BoxFut<'a, Result<String, ProbeError>> {
        let text = self.loaded.lock().unwrap().clone();
        Box::pin(async move { Ok(text) })
    }
}

fn context(age: Option<f64>) -> (Arc<Context>, ApiHandle, Arc<Metrics>) {
    let (ctx, handle, metrics, _) = context_with_probe(age);
    (ctx, handle, metrics)
}

fn context_with_probe(age: Option<f64>) -> (Arc<Context>, ApiHandle, Arc<Metrics>, Arc<FakeProbe>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let metrics = Arc::new(Metrics::new());
    let probe = Arc::new(FakeProbe {
        age,
        reloads: Default::default(),
        loaded: Default::default(),
    });
    let ctx = Context::new(client, "orrery:test".into(), metrics.clone(), probe.clone());
    (Arc::new(ctx), handle, metrics, probe)
}

fn receive_cluster() -> ReceiveCluster {
    let mut rc = ReceiveCluster::new(
        "main",
        ReceiveClusterSpec {
            replicas: 3,
            replication_factor: 1,
            image: None,
            retention: None,
            storage: None,
            empty_dir_size_limit: None,
            resources: None,
            external_labels: BTreeMap::new(),
            hashring_algorithm: HashringAlgorithm::Ketama,
            node_selector: None,
            tolerations: None,
            affinity: None,
            grpc_tls: None,
            paused: false,
        },
    );
    rc.metadata.namespace = Some("orrery".into());
    rc.metadata.uid = Some("rc-uid".into());
    rc.metadata.generation = Some(2);
    rc.metadata.resource_version = Some("10".into());
    rc
}

fn pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "orrery"},
        "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    })
}

#[tokio::test]
async fn receive_cluster_create_applies_children_then_status() {
    let (ctx, mut api, metrics) = context(None);
    let rc = Arc::new(receive_cluster());
    let reconciler = tokio::spawn(receive::reconcile(rc.clone(), ctx));

    let s = expect(&mut api, Method::GET, "/api/v1/namespaces/orrery/pods").await;
    assert!(
        s.query
            .contains("labelSelector=app.kubernetes.io%2Fcomponent%3Dreceive"),
        "{}",
        s.query
    );
    respond(
        s.send,
        200,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod("main-receive-0", true), pod("main-receive-1", false), pod("main-receive-2", true)
        ]}),
    );
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
    )
    .await;
    respond(
        s.send,
        404,
        &status(404, "NotFound", "configmaps \"main-hashring\" not found"),
    );

    let cm = expect_apply(
        &mut api,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
        json!({}),
    )
    .await;
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "rc-uid");
    let ring: Value = serde_json::from_str(cm["data"]["hashrings.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        ring,
        json!([{"hashring": "default", "algorithm": "ketama", "endpoints": [
            "main-receive-0.main-receive-headless.orrery.svc:10901",
            "main-receive-2.main-receive-headless.orrery.svc:10901"
        ]}])
    );
    let headless = expect_apply(
        &mut api,
        "/api/v1/namespaces/orrery/services/main-receive-headless",
        json!({}),
    )
    .await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let rw = expect_apply(
        &mut api,
        "/api/v1/namespaces/orrery/services/main-receive",
        json!({}),
    )
    .await;
    assert_eq!(rw["spec"]["ports"][0]["port"], 19291);
    let sts = expect_apply(
        &mut api,
        "/apis/apps/v1/namespaces/orrery/statefulsets/main-receive",
        json!({"status": {"replicas": 3, "readyReplicas": 2}}),
    )
    .await;
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "orrery:test"
    );
    let pdb = expect_apply(
        &mut api,
        "/apis/policy/v1/namespaces/orrery/poddisruptionbudgets/main-receive",
        json!({}),
    )
    .await;
    // RF=1: one receiver may be evicted; 0 would block every node drain (D8).
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let st = expect(
        &mut api,
        Method::PATCH,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters/main/status",
    )
    .await;
    assert!(
        st.query.contains("fieldManager=orrery-operator"),
        "{}",
        st.query
    );
    let body = st.body.clone();
    respond(st.send, 200, &serde_json::to_value(&*rc).unwrap());
    assert_eq!(body["kind"], "ReceiveCluster");
    let status: ReceiveClusterStatus = serde_json::from_value(body["status"].clone()).unwrap();
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.hashring_endpoints.len(), 2);
    assert_eq!(
        status.remote_write_url.as_deref(),
        Some("http://main-receive.orrery.svc:19291/api/v1/receive")
    );
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.observed_generation))
    };
    assert_eq!(cond("Ready"), Some(("False".into(), Some(2))));
    assert_eq!(cond("Progressing"), Some(("True".into(), Some(2))));
    assert_eq!(cond("Degraded"), Some(("False".into(), Some(2))));

    let action = reconciler.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert!(
        metrics
            .render()
            .contains("orrery_operator_reconcile_total{controller=\"receivecluster\"} 1")
    );
}

#[tokio::test]
async fn receive_cluster_keeps_previous_ring_when_too_few_ready() {
    let (ctx, mut api, _) = context(None);
    let mut rc = receive_cluster();
    rc.spec.replication_factor = 3;
    let reconciler = tokio::spawn(receive::reconcile(Arc::new(rc), ctx));
    let s = expect(&mut api, Method::GET, "/api/v1/namespaces/orrery/pods").await;
    respond(
        s.send,
        200,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod("main-receive-0", true)]}),
    );
    let previous = json!([{"hashring": "default", "algorithm": "ketama", "endpoints": ["a:10901", "b:10901", "c:10901"]}]);
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
    )
    .await;
    respond(
        s.send,
        200,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "main-hashring", "namespace": "orrery"},
                "data": {"hashrings.json": previous.to_string()}}),
    );
    let cm = expect_apply(
        &mut api,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
        json!({}),
    )
    .await;
    let ring: Value = serde_json::from_str(cm["data"]["hashrings.json"].as_str().unwrap()).unwrap();
    assert_eq!(ring, previous);
    for path in [
        "/api/v1/namespaces/orrery/services/main-receive-headless",
        "/api/v1/namespaces/orrery/services/main-receive",
        "/apis/apps/v1/namespaces/orrery/statefulsets/main-receive",
    ] {
        expect_apply(&mut api, path, json!({})).await;
    }
    let pdb = expect_apply(
        &mut api,
        "/apis/policy/v1/namespaces/orrery/poddisruptionbudgets/main-receive",
        json!({}),
    )
    .await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let st = expect(
        &mut api,
        Method::PATCH,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters/main/status",
    )
    .await;
    assert_eq!(st.body["status"]["readyReplicas"], 0);
    let degraded = st.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    respond(
        st.send,
        200,
        &json!({"apiVersion": "orrery.dev/v1alpha1", "kind": "ReceiveCluster", "metadata": {"name": "main"}, "spec": {"replicas": 3}}),
    );
    assert_eq!(degraded["status"], "True");
    reconciler.await.unwrap().unwrap();
}

/// Plays the API server up to the StatefulSet apply of a ReceiveCluster reconcile (pods,
/// hashring ConfigMap, Services), returning the StatefulSet SSA request unanswered.
async fn receive_until_statefulset(api: &mut ApiHandle) -> Seen {
    let s = expect(api, Method::GET, "/api/v1/namespaces/orrery/pods").await;
    respond(
        s.send,
        200,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod("main-receive-0", true), pod("main-receive-1", true), pod("main-receive-2", true)
        ]}),
    );
    let s = expect(
        api,
        Method::GET,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
    )
    .await;
    respond(s.send, 404, &status(404, "NotFound", "not found"));
    for path in [
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
        "/api/v1/namespaces/orrery/services/main-receive-headless",
        "/api/v1/namespaces/orrery/services/main-receive",
    ] {
        expect_apply(api, path, json!({})).await;
    }
    expect(
        api,
        Method::PATCH,
        "/apis/apps/v1/namespaces/orrery/statefulsets/main-receive",
    )
    .await
}

/// `spec.grpcTls`: the StatefulSet the controller applies mounts the Secret as a
/// directory and runs the receivers with mTLS on gRPC (server and forwarding client).
#[tokio::test]
async fn receive_cluster_with_grpc_tls_applies_an_mtls_statefulset() {
    let (ctx, mut api, _) = context(None);
    let mut rc = receive_cluster();
    rc.spec.grpc_tls = Some(operator::crd::TlsSecretRef {
        secret_name: "main-receive-tls".into(),
    });
    let reconciler = tokio::spawn(receive::reconcile(Arc::new(rc), ctx));
    let sts = receive_until_statefulset(&mut api).await;
    let body = sts.body.clone();
    respond(sts.send, 200, &body);
    reconciler.abort();
    let pod = &body["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "grpc-tls")
            .map(|v| v["secret"]["secretName"].clone()),
        Some(json!("main-receive-tls")),
        "{pod}"
    );
    let c = &pod["containers"][0];
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "grpc-tls"
                && m["mountPath"] == "/etc/orrery/grpc-tls"
                && m["readOnly"] == true
                && m.get("subPath").is_none()),
        "{c}"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--grpc-server-tls-client-ca=/etc/orrery/grpc-tls/ca.crt",
        "--remote-write.client-tls-secure",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
}

const STS_PATH: &str = "/apis/apps/v1/namespaces/orrery/statefulsets/main-receive";
const IMMUTABLE: &str = "StatefulSet.apps \"main-receive\" is invalid: spec: Forbidden: updates to \
     statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', \
     'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

/// Refuses the StatefulSet SSA as the API server does for an immutable field and expects
/// the orphaning delete, answering it with the terminating object; returns the desired
/// StatefulSet the controller sent.
async fn refuse_immutable_then_expect_orphan_delete(api: &mut ApiHandle) -> Value {
    let first = receive_until_statefulset(api).await;
    assert!(
        first.query.contains("fieldManager=orrery-operator") && first.query.contains("force=true"),
        "not an SSA with our field manager: {}",
        first.query
    );
    let desired = first.body.clone();
    respond(first.send, 422, &status(422, "Invalid", IMMUTABLE));
    let del = expect(api, Method::DELETE, STS_PATH).await;
    assert_eq!(
        del.body["propagationPolicy"], "Orphan",
        "not an orphaning delete: query {:?}, body {}",
        del.query, del.body
    );
    let mut terminating = desired.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    terminating["metadata"]["finalizers"] = json!(["orphan"]);
    respond(del.send, 200, &terminating);
    desired
}

fn receive_cluster_with_storage(size: &str) -> ReceiveCluster {
    let mut rc = receive_cluster();
    rc.spec.storage = Some(StorageSpec {
        size: size.into(),
        storage_class_name: None,
    });
    rc
}

// Paused time: the poll interval between the two GETs costs nothing.
#[tokio::test(start_paused = true)]
async fn receive_cluster_recreates_statefulset_when_an_immutable_field_changes() {
    let (ctx, mut api, _) = context(None);
    // A new volume size changes volumeClaimTemplates, which Kubernetes refuses to update.
    let rc = Arc::new(receive_cluster_with_storage("20Gi"));
    let reconciler = tokio::spawn(receive::reconcile(rc.clone(), ctx));

    // The SSA of the changed StatefulSet is refused; it is deleted with
    // propagationPolicy Orphan, so pods and PVCs survive.
    let desired = refuse_immutable_then_expect_orphan_delete(&mut api).await;
    assert_eq!(
        desired["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi",
        "{desired}"
    );
    let mut terminating = desired.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    terminating["metadata"]["finalizers"] = json!(["orphan"]);

    // Still there once (the garbage collector orphans the pods first), then gone.
    let g = expect(&mut api, Method::GET, STS_PATH).await;
    respond(g.send, 200, &terminating);
    let g = expect(&mut api, Method::GET, STS_PATH).await;
    respond(g.send, 404, &status(404, "NotFound", "not found"));

    // Applied again, unchanged, by our field manager.
    let again = expect_apply(
        &mut api,
        STS_PATH,
        json!({"status": {"replicas": 3, "readyReplicas": 3}}),
    )
    .await;
    assert_eq!(
        again, desired,
        "the re-created StatefulSet is the desired one"
    );

    // D13: the existing claims are resized (the new template reaches new ones only).
    for i in 0..3 {
        let path =
            format!("/api/v1/namespaces/orrery/persistentvolumeclaims/data-main-receive-{i}");
        let g = expect(&mut api, Method::GET, &path).await;
        if i == 2 {
            respond(g.send, 404, &status(404, "NotFound", "not found"));
            continue;
        }
        respond(g.send, 200, &pvc(&format!("data-main-receive-{i}"), "10Gi"));
        let p = expect(&mut api, Method::PATCH, &path).await;
        assert_eq!(
            p.body,
            json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})
        );
        respond(p.send, 200, &pvc(&format!("data-main-receive-{i}"), "20Gi"));
    }

    // A Normal event on the ReceiveCluster says what happened.
    let ev = expect(
        &mut api,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/orrery/events",
    )
    .await;
    let body = ev.body.clone();
    respond(ev.send, 201, &body);
    assert_eq!(body["type"], "Normal", "{body}");
    assert_eq!(body["reason"], "StatefulSetRecreated", "{body}");
    assert_eq!(body["regarding"]["kind"], "ReceiveCluster", "{body}");
    assert_eq!(body["regarding"]["name"], "main", "{body}");
    assert_eq!(body["reportingController"], "orrery-operator", "{body}");
    assert!(
        body["note"].as_str().unwrap_or("").contains("main-receive"),
        "{body}"
    );
    assert!(
        body["note"]
            .as_str()
            .unwrap_or("")
            .contains("resized to 20Gi: data-main-receive-0, data-main-receive-1"),
        "{body}"
    );

    expect_apply(
        &mut api,
        "/apis/policy/v1/namespaces/orrery/poddisruptionbudgets/main-receive",
        json!({}),
    )
    .await;
    let st = expect(
        &mut api,
        Method::PATCH,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters/main/status",
    )
    .await;
    assert_eq!(st.body["status"]["readyReplicas"], 3);
    respond(st.send, 200, &serde_json::to_value(&*rc).unwrap());
    let action = reconciler.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn receive_cluster_other_invalid_statefulset_is_an_error_not_a_delete() {
    let (ctx, mut api, _) = context(None);
    let reconciler = tokio::spawn(receive::reconcile(Arc::new(receive_cluster()), ctx));
    let first = receive_until_statefulset(&mut api).await;
    respond(
        first.send,
        422,
        &status(
            422,
            "Invalid",
            "StatefulSet.apps \"main-receive\" is invalid: spec.replicas: Invalid value: -1",
        ),
    );
    // D11: the failure is shown on the object (status and a Warning Event).
    let msg = expect_reconcile_error_reported(&mut api).await;
    assert!(msg.contains("spec.replicas"), "{msg}");
    let err = reconciler
        .await
        .unwrap()
        .expect_err("an invalid StatefulSet must fail the reconcile");
    assert!(err.to_string().contains("spec.replicas"), "{err}");
    // No further request (no delete) was made.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), api.next_request())
            .await
            .map(|r| r.is_none())
            .unwrap_or(true),
        "unexpected request after the refused apply"
    );
}

#[tokio::test]
async fn receive_cluster_recreate_tolerates_a_statefulset_already_gone() {
    let (ctx, mut api, _) = context(None);
    let rc = Arc::new(receive_cluster_with_storage("20Gi"));
    let reconciler = tokio::spawn(receive::reconcile(rc.clone(), ctx));
    let first = receive_until_statefulset(&mut api).await;
    let desired = first.body.clone();
    respond(first.send, 422, &status(422, "Invalid", IMMUTABLE));
    // Someone else deleted it meanwhile: the delete's 404 is not an error.
    let del = expect(&mut api, Method::DELETE, STS_PATH).await;
    assert_eq!(del.body["propagationPolicy"], "Orphan", "{}", del.body);
    respond(del.send, 404, &status(404, "NotFound", "not found"));
    let g = expect(&mut api, Method::GET, STS_PATH).await;
    respond(g.send, 404, &status(404, "NotFound", "not found"));
    let again = expect_apply(
        &mut api,
        STS_PATH,
        json!({"status": {"replicas": 3, "readyReplicas": 1}}),
    )
    .await;
    assert_eq!(again, desired);
    for i in 0..3 {
        let path =
            format!("/api/v1/namespaces/orrery/persistentvolumeclaims/data-main-receive-{i}");
        let g = expect(&mut api, Method::GET, &path).await;
        respond(g.send, 404, &status(404, "NotFound", "not found"));
    }
    let ev = expect(
        &mut api,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/orrery/events",
    )
    .await;
    let body = ev.body.clone();
    respond(ev.send, 201, &body);
    assert_eq!(body["reason"], "StatefulSetRecreated", "{body}");
    expect_apply(
        &mut api,
        "/apis/policy/v1/namespaces/orrery/poddisruptionbudgets/main-receive",
        json!({}),
    )
    .await;
    let st = expect(
        &mut api,
        Method::PATCH,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters/main/status",
    )
    .await;
    assert_eq!(st.body["status"]["readyReplicas"], 1);
    respond(st.send, 200, &serde_json::to_value(&*rc).unwrap());
    let action = reconciler.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
}

fn pvc(name: &str, size: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "orrery"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}})
}

/// D13: claims already at the size are left alone; a refused resize (a StorageClass
/// without allowVolumeExpansion) is reported by name, not hidden.
#[tokio::test]
async fn resize_claims_skips_settled_and_reports_refused_claims() {
    let (ctx, mut api, _) = context(None);
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), "orrery");
    let task = tokio::spawn(async move {
        operator::controller::receive::resize_claims(&pvcs, "main-receive", 2, "20Gi").await
    });
    let base = "/api/v1/namespaces/orrery/persistentvolumeclaims";
    let g = expect(
        &mut api,
        Method::GET,
        &format!("{base}/data-main-receive-0"),
    )
    .await;
    respond(g.send, 200, &pvc("data-main-receive-0", "20Gi"));
    let g = expect(
        &mut api,
        Method::GET,
        &format!("{base}/data-main-receive-1"),
    )
    .await;
    respond(g.send, 200, &pvc("data-main-receive-1", "10Gi"));
    let p = expect(
        &mut api,
        Method::PATCH,
        &format!("{base}/data-main-receive-1"),
    )
    .await;
    respond(
        p.send,
        403,
        &status(
            403,
            "Forbidden",
            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
        ),
    );
    let r = task.await.unwrap();
    assert!(r.resized.is_empty(), "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(
        r.failed[0].starts_with("data-main-receive-1: only dynamically"),
        "{r:?}"
    );
}

/// The old StatefulSet never goes away (e.g. a stuck orphan finalizer): after the bounded
/// wait the reconcile fails with a clear error, without applying over the terminating
/// object; the error policy retries later. Paused time: the waits cost nothing.
#[tokio::test(start_paused = true)]
async fn receive_cluster_recreate_gives_up_when_the_old_statefulset_stays() {
    let (ctx, mut api, _) = context(None);
    let reconciler = tokio::spawn(receive::reconcile(
        Arc::new(receive_cluster_with_storage("20Gi")),
        ctx,
    ));
    let desired = refuse_immutable_then_expect_orphan_delete(&mut api).await;
    let mut terminating = desired.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    for _ in 0..operator::controller::RECREATE_WAIT_POLLS {
        let g = expect(&mut api, Method::GET, STS_PATH).await;
        respond(g.send, 200, &terminating);
    }
    expect_reconcile_error_reported(&mut api).await;
    let err = reconciler
        .await
        .unwrap()
        .expect_err("a StatefulSet that never goes away must fail the reconcile");
    assert!(
        matches!(&err, operator::controller::Error::Recreate(n) if n == "main-receive"),
        "{err}"
    );
    assert!(
        api.next_request().await.is_none(),
        "no request (no apply over the terminating StatefulSet) after giving up"
    );
}

const RC_STATUS: &str = "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters/main/status";

/// D11: after a failed reconcile, expects the status write (`Ready=False`, reason
/// `ReconcileError`) and the Warning Event; returns the condition's message.
async fn expect_reconcile_error_reported(api: &mut ApiHandle) -> String {
    let st = expect(api, Method::PATCH, RC_STATUS).await;
    let ready = st.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ReconcileError");
    respond(
        st.send,
        200,
        &serde_json::to_value(receive_cluster()).unwrap(),
    );
    let note = expect_event(api, "ReconcileError").await;
    assert_eq!(note, ready["message"].as_str().unwrap());
    note
}

/// D11: an API refusal before the status write (here the Service apply, 422) reaches
/// the ReceiveCluster's status and Events.
#[tokio::test]
async fn receive_cluster_failure_is_reported_on_the_object() {
    let (ctx, mut api, _) = context(None);
    let reconciler = tokio::spawn(receive::reconcile(Arc::new(receive_cluster()), ctx));
    let s = expect(&mut api, Method::GET, "/api/v1/namespaces/orrery/pods").await;
    respond(
        s.send,
        200,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
    );
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
    )
    .await;
    respond(s.send, 404, &status(404, "NotFound", "not found"));
    expect_apply(
        &mut api,
        "/api/v1/namespaces/orrery/configmaps/main-hashring",
        json!({}),
    )
    .await;
    let s = expect(
        &mut api,
        Method::PATCH,
        "/api/v1/namespaces/orrery/services/main-receive-headless",
    )
    .await;
    respond(
        s.send,
        422,
        &status(
            422,
            "Invalid",
            "Service \"main-receive-headless\" is invalid: metadata.name: must be no more than 63 characters",
        ),
    );
    let msg = expect_reconcile_error_reported(&mut api).await;
    assert!(msg.contains("no more than 63 characters"), "{msg}");
    reconciler.await.unwrap().expect_err("the reconcile failed");
}

fn global_view(deleting: bool) -> GlobalView {
    let mut gv = GlobalView::new(
        "global",
        GlobalViewSpec {
            receive_clusters: ReceiveClusterSelector {
                names: vec!["main".into()],
                selector: None,
            },
            endpoints: vec![],
            replica_labels: vec![],
            image: None,
            replicas: 1,
            resources: None,
            clusters: vec![ClusterSpec {
                name: "batcave".into(),
                prometheus_ref: Some(PrometheusRef {
                    name: "batcave".into(),
                    namespace: Some("monitoring".into()),
                }),
                config_map_ref: None,
                remote_cluster_secret_ref: None,
                remote_write_url: None,
                tenant: Some("wayne".into()),
                mode: Default::default(),
                sidecar: None,
            }],
            grpc_client_tls: None,
            paused: false,
        },
    );
    let m = gv.meta_mut();
    m.namespace = Some("orrery".into());
    m.uid = Some("gv-uid".into());
    m.generation = Some(1);
    m.resource_version = Some("5".into());
    m.finalizers = Some(vec![global_view::FINALIZER.into()]);
    if deleting {
        m.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    }
    gv
}

fn prometheus(rv: &str, entries: Value) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        // In another namespace than the GlobalView: it opts in (D2).
        "metadata": {"name": "batcave", "namespace": "monitoring", "resourceVersion": rv,
                     "annotations": {"orrery.dev/allow-globalviews-from": "team-a, orrery"}},
        "spec": {"replicas": 1, "remoteWrite": entries}
    })
}

#[tokio::test]
async fn global_view_conflict_on_prometheus_is_retried() {
    let (ctx, mut api, _) = context(Some(3.2));
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(global_view(false)), ctx));

    let s = expect(
        &mut api,
        Method::GET,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters",
    )
    .await;
    let mut rc = receive_cluster();
    rc.status = Some(ReceiveClusterStatus {
        remote_write_url: Some("http://main-receive.orrery.svc:19291/api/v1/receive".into()),
        ..Default::default()
    });
    respond(
        s.send,
        200,
        &json!({"apiVersion": "orrery.dev/v1alpha1", "kind": "ReceiveClusterList", "metadata": {}, "items": [rc]}),
    );
    let dep = expect_apply(
        &mut api,
        "/apis/apps/v1/namespaces/orrery/deployments/global-query",
        json!({"status": {"readyReplicas": 1}}),
    )
    .await;
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array().unwrap().contains(&json!(
            "--endpoint=dns+main-receive-headless.orrery.svc:10901"
        )),
        "{args}"
    );
    expect_apply(
        &mut api,
        "/api/v1/namespaces/orrery/services/global-query",
        json!({}),
    )
    .await;

    let prom_path = "/apis/monitoring.coreos.com/v1/namespaces/monitoring/prometheuses/batcave";
    let user = json!({"name": "user", "url": "http://user/api/v1/write"});
    let s = expect(&mut api, Method::GET, prom_path).await;
    respond(s.send, 200, &prometheus("1", json!([user])));
    let s = expect(&mut api, Method::PUT, prom_path).await;
    assert_eq!(s.body["metadata"]["resourceVersion"], "1");
    assert_eq!(s.body["spec"]["remoteWrite"].as_array().unwrap().len(), 2);
    respond(
        s.send,
        409,
        &status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
    );
    // Someone else added an entry in between: the retry must keep it.
    let other = json!({"name": "other", "url": "http://other/write"});
    let s = expect(&mut api, Method::GET, prom_path).await;
    respond(s.send, 200, &prometheus("2", json!([user, other])));
    let s = expect(&mut api, Method::PUT, prom_path).await;
    assert_eq!(s.body["metadata"]["resourceVersion"], "2");
    let list = s.body["spec"]["remoteWrite"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0], user);
    assert_eq!(list[1], other);
    assert_eq!(list[2]["name"], "orrery-orrery.global.batcave");
    assert_eq!(
        list[2]["url"],
        "http://main-receive.orrery.svc:19291/api/v1/receive"
    );
    assert_eq!(list[2]["headers"]["THANOS-TENANT"], "wayne");
    assert_eq!(s.body["spec"]["replicas"], 1);
    let echoed = s.body.clone();
    respond(s.send, 200, &echoed);

    let st = expect(
        &mut api,
        Method::PATCH,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/globalviews/global/status",
    )
    .await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    let c = &body["status"]["clusters"][0];
    assert_eq!(c["name"], "batcave");
    assert_eq!(c["remoteWriteConfigured"], true);
    // No clock-derived value in status (D4).
    assert!(c.get("lastSampleAge").is_none(), "{c}");
    assert_eq!(c["prometheusRef"]["namespace"], "monitoring");
    let flowing = c["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "DataFlowing")
        .unwrap();
    assert_eq!(flowing["status"], "True");
    assert_eq!(body["status"]["readyReplicas"], 1);
    assert_eq!(
        body["status"]["endpoints"],
        json!(["dns+main-receive-headless.orrery.svc:10901"])
    );
    let ready = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    let action = reconciler.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn global_view_deletion_removes_only_our_entry_then_finalizer() {
    let (ctx, mut api, _) = context(None);
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(global_view(true)), ctx));
    let prom_path = "/apis/monitoring.coreos.com/v1/namespaces/monitoring/prometheuses/batcave";
    let user = json!({"name": "user", "url": "http://user/api/v1/write"});
    let ours = json!({"name": "orrery-global-batcave", "url": "http://main-receive.orrery.svc:19291/api/v1/receive"});
    let s = expect(&mut api, Method::GET, prom_path).await;
    respond(s.send, 200, &prometheus("7", json!([user, ours])));
    let s = expect(&mut api, Method::PUT, prom_path).await;
    assert_eq!(s.body["spec"]["remoteWrite"], json!([user]));
    assert_eq!(s.body["metadata"]["resourceVersion"], "7");
    let echoed = s.body.clone();
    respond(s.send, 200, &echoed);
    // Then the finalizer is dropped with a JSON patch.
    let s = expect(
        &mut api,
        Method::PATCH,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/globalviews/global",
    )
    .await;
    let ops = s.body.to_string();
    assert!(
        ops.contains("\"remove\"") && ops.contains("/metadata/finalizers"),
        "{ops}"
    );
    let mut gv = serde_json::to_value(global_view(false)).unwrap();
    gv["metadata"]["finalizers"] = json!([]);
    respond(s.send, 200, &gv);
    let action = reconciler.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
}

/// Answers the requests every GlobalView apply starts with: the ReceiveCluster list,
/// the querier Deployment and Service.
async fn global_view_prefix(api: &mut ApiHandle) {
    let s = expect(
        api,
        Method::GET,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters",
    )
    .await;
    let mut rc = receive_cluster();
    rc.status = Some(ReceiveClusterStatus {
        remote_write_url: Some("http://main-receive.orrery.svc:19291/api/v1/receive".into()),
        ..Default::default()
    });
    respond(
        s.send,
        200,
        &json!({"apiVersion": "orrery.dev/v1alpha1", "kind": "ReceiveClusterList", "metadata": {}, "items": [rc]}),
    );
    expect_apply(
        api,
        "/apis/apps/v1/namespaces/orrery/deployments/global-query",
        json!({"status": {"readyReplicas": 1}}),
    )
    .await;
    expect_apply(
        api,
        "/api/v1/namespaces/orrery/services/global-query",
        json!({}),
    )
    .await;
}

const GV_STATUS: &str = "/apis/orrery.dev/v1alpha1/namespaces/orrery/globalviews/global/status";
const GV_PATH: &str = "/apis/orrery.dev/v1alpha1/namespaces/orrery/globalviews/global";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/orrery/events";

/// A GlobalView whose one cluster is a prometheus.yml ConfigMap.
fn global_view_config_map(deleting: bool, namespace: Option<&str>) -> GlobalView {
    let mut gv = global_view(deleting);
    gv.spec.clusters[0].prometheus_ref = None;
    gv.spec.clusters[0].config_map_ref = Some(ConfigMapRef {
        name: "prometheus".into(),
        namespace: namespace.map(String::from),
        key: "prometheus.yml".into(),
        reload_url: Some("http://prometheus.orrery.svc:9090/-/reload".into()),
    });
    gv
}

fn config_map(ns: &str, yml: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "prometheus", "namespace": ns, "resourceVersion": "3"},
           "data": {"prometheus.yml": yml}})
}

fn cluster_condition<'a>(status: &'a Value, ty: &str) -> &'a Value {
    status["status"]["clusters"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap()
}

/// Expects an Event POST with `reason`, answering it; returns its note.
async fn expect_event(api: &mut ApiHandle, reason: &str) -> String {
    // The Recorder POSTs an event once, then PATCHes it as a series on repeats.
    let s = next(api).await;
    assert!(
        (s.method == Method::POST && s.path == EVENTS)
            || (s.method == Method::PATCH && s.path.starts_with(EVENTS)),
        "expected an Event, got {} {} {}",
        s.method,
        s.path,
        s.body
    );
    assert_eq!(s.body["reason"], reason, "{}", s.body);
    assert_eq!(s.body["type"], "Warning");
    let note = s.body["note"].as_str().unwrap_or_default().to_string();
    let echoed = s.body.clone();
    respond(s.send, 201, &echoed);
    note
}

async fn expect_finalizer_removed(api: &mut ApiHandle) {
    let s = expect(api, Method::PATCH, GV_PATH).await;
    let ops = s.body.to_string();
    assert!(
        ops.contains("\"remove\"") && ops.contains("/metadata/finalizers"),
        "{ops}"
    );
    let mut gv = serde_json::to_value(global_view(false)).unwrap();
    gv["metadata"]["finalizers"] = json!([]);
    respond(s.send, 200, &gv);
}

/// D1: a Secret that holds a kubeconfig (here with an exec plugin and a tokenFile) is
/// refused; the operator makes no request to the server the kubeconfig names and the
/// cluster reports RemoteWriteConfigured=False.
#[tokio::test]
async fn global_view_refuses_a_kubeconfig_secret() {
    let (ctx, mut api, _) = context(Some(3.2));
    let mut gv = global_view(false);
    gv.spec.clusters[0].remote_cluster_secret_ref = Some(RemoteClusterSecretRef {
        name: "batcave-cluster".into(),
    });
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    global_view_prefix(&mut api).await;
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/orrery/secrets/batcave-cluster",
    )
    .await;
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://attacker.example\"}}]\n\
        users: [{name: u, user: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token, \
        exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}}]\n\
        contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n";
    let b64 =
        serde_json::to_value(k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec())).unwrap();
    respond(
        s.send,
        200,
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "batcave-cluster", "namespace": "orrery"},
                "data": {"kubeconfig": b64}}),
    );
    // Next (and last) request: the status write, on our own API server.
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    let c = cluster_condition(&body, "RemoteWriteConfigured");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "RemoteClusterSecretInvalid");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("kubeconfigs are not accepted"),
        "{c}"
    );
    reconciler.await.unwrap().unwrap();
    assert!(api.next_request().await.is_none());
}

/// D2: a GlobalView may not edit a ConfigMap in another namespace (here kube-system)
/// that has not opted in: no PUT, and the reason says why.
#[tokio::test]
async fn global_view_cross_namespace_target_needs_opt_in() {
    let (ctx, mut api, _) = context(None);
    let gv = global_view_config_map(false, Some("kube-system"));
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    global_view_prefix(&mut api).await;
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/kube-system/configmaps/prometheus",
    )
    .await;
    respond(s.send, 200, &config_map("kube-system", "global: {}\n"));
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    let c = cluster_condition(&body, "RemoteWriteConfigured");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "TargetNotAllowed");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("orrery.dev/allow-globalviews-from=orrery"),
        "{c}"
    );
    reconciler.await.unwrap().unwrap();
    assert!(api.next_request().await.is_none(), "no PUT, no reload");
}

/// D3: deleting a GlobalView whose remote-cluster Secret is already gone (the namespace
/// is being deleted) drops the finalizer, with a Warning Event naming what was left.
#[tokio::test]
async fn global_view_deletion_with_missing_secret_does_not_wedge() {
    let (ctx, mut api, _) = context(None);
    let mut gv = global_view(true);
    gv.spec.clusters[0].remote_cluster_secret_ref = Some(RemoteClusterSecretRef {
        name: "batcave-cluster".into(),
    });
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/orrery/secrets/batcave-cluster",
    )
    .await;
    respond(
        s.send,
        404,
        &status(404, "NotFound", "secrets \"batcave-cluster\" not found"),
    );
    let note = expect_event(&mut api, "CleanupAbandoned").await;
    assert!(note.contains("orrery-orrery.global.batcave"), "{note}");
    expect_finalizer_removed(&mut api).await;
    assert_eq!(reconciler.await.unwrap().unwrap(), Action::await_change());
}

/// D3: a 403 on the target is not retried forever either.
#[tokio::test]
async fn global_view_deletion_with_forbidden_target_does_not_wedge() {
    let (ctx, mut api, _) = context(None);
    let gv = global_view_config_map(true, None);
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    let s = expect(
        &mut api,
        Method::GET,
        "/api/v1/namespaces/orrery/configmaps/prometheus",
    )
    .await;
    respond(
        s.send,
        403,
        &status(403, "Forbidden", "configmaps \"prometheus\" is forbidden"),
    );
    expect_event(&mut api, "CleanupAbandoned").await;
    expect_finalizer_removed(&mut api).await;
    assert_eq!(reconciler.await.unwrap().unwrap(), Action::await_change());
}

/// D3: a transient failure (500) is retried, but only MAX_CLEANUP_ATTEMPTS times.
#[tokio::test]
async fn global_view_deletion_retries_transient_errors_a_bounded_number_of_times() {
    let (ctx, mut api, _) = context(None);
    let gv = Arc::new(global_view_config_map(true, None));
    for attempt in 1..=global_view::MAX_CLEANUP_ATTEMPTS {
        let reconciler = tokio::spawn(global_view::reconcile(gv.clone(), ctx.clone()));
        let s = expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/orrery/configmaps/prometheus",
        )
        .await;
        respond(s.send, 500, &status(500, "InternalError", "etcd timeout"));
        if attempt < global_view::MAX_CLEANUP_ATTEMPTS {
            expect_event(&mut api, "CleanupRetrying").await;
            let err = reconciler.await.unwrap().expect_err("kept for a retry");
            // What the controller does with the error: count it for the backoff.
            global_view::error_policy(gv.clone(), &err, ctx.clone());
        } else {
            expect_event(&mut api, "CleanupAbandoned").await;
            expect_finalizer_removed(&mut api).await;
            assert_eq!(reconciler.await.unwrap().unwrap(), Action::await_change());
        }
    }
}

/// D3: the documented escape: `orrery.dev/skip-cleanup: "true"` drops the finalizer
/// without touching any target.
#[tokio::test]
async fn global_view_skip_cleanup_annotation_drops_the_finalizer() {
    let (ctx, mut api, _) = context(None);
    let mut gv = global_view(true);
    gv.metadata.annotations = Some(BTreeMap::from([(
        global_view::SKIP_CLEANUP_ANNOTATION.to_string(),
        "true".to_string(),
    )]));
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    expect_event(&mut api, "CleanupSkipped").await;
    expect_finalizer_removed(&mut api).await;
    assert_eq!(reconciler.await.unwrap().unwrap(), Action::await_change());
}

/// D9: removing our entry from a prometheus.yml ConfigMap asks Prometheus to reload.
#[tokio::test]
async fn global_view_deletion_reloads_prometheus_after_removal() {
    let (ctx, mut api, _, probe) = context_with_probe(None);
    let gv = global_view_config_map(true, None);
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    let path = "/api/v1/namespaces/orrery/configmaps/prometheus";
    let yml = "global:\n  scrape_interval: 15s\nremote_write:\n- name: orrery-global-batcave\n  url: http://main-receive.orrery.svc:19291/api/v1/receive\n";
    let s = expect(&mut api, Method::GET, path).await;
    respond(s.send, 200, &config_map("orrery", yml));
    let s = expect(&mut api, Method::PUT, path).await;
    assert!(
        !s.body["data"]["prometheus.yml"]
            .as_str()
            .unwrap()
            .contains("orrery-global-batcave")
    );
    let echoed = s.body.clone();
    respond(s.send, 200, &echoed);
    expect_finalizer_removed(&mut api).await;
    reconciler.await.unwrap().unwrap();
    assert_eq!(
        *probe.reloads.lock().unwrap(),
        vec!["http://prometheus.orrery.svc:9090/-/reload".to_string()]
    );
}

/// D4: two reconciles 1.4 s apart, with sample ages 12.2 s and 13.6 s: the second
/// writes no status (a status write would trigger the next reconcile at once).
#[tokio::test]
async fn global_view_status_is_not_rewritten_when_only_the_sample_age_moved() {
    let prom_path = "/apis/monitoring.coreos.com/v1/namespaces/monitoring/prometheuses/batcave";
    let ours = json!({"name": "orrery-orrery.global.batcave",
        "url": "http://main-receive.orrery.svc:19291/api/v1/receive",
        "headers": {"THANOS-TENANT": "wayne"},
        "writeRelabelConfigs": [{"action": "replace", "targetLabel": "cluster", "replacement": "batcave"}]});
    let mut gv = global_view(false);
    let mut first = Value::Null;
    for age in [12.2, 13.6] {
        let (ctx, mut api, _) = context(Some(age));
        let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv.clone()), ctx));
        global_view_prefix(&mut api).await;
        let s = expect(&mut api, Method::GET, prom_path).await;
        respond(s.send, 200, &prometheus("1", json!([ours.clone()])));
        if first.is_null() {
            let s = next(&mut api).await;
            if s.method == Method::PUT {
                panic!("settled entry rewritten: {}", s.body);
            }
            assert_eq!((&s.method, s.path.as_str()), (&Method::PATCH, GV_STATUS));
            first = s.body.clone();
            respond(
                s.send,
                200,
                &serde_json::to_value(global_view(false)).unwrap(),
            );
            reconciler.await.unwrap().unwrap();
            gv.status = Some(serde_json::from_value(first["status"].clone()).unwrap());
        } else {
            reconciler.await.unwrap().unwrap();
            let more = tokio::time::timeout(Duration::from_secs(1), api.next_request()).await;
            assert!(
                matches!(more, Ok(None) | Err(_)),
                "the second reconcile wrote something"
            );
        }
    }
    assert!(!first.to_string().contains("12s"), "{first}");
}

/// D5: a cluster that left the spec, whose entry cannot be removed (500), stays in
/// status as pendingRemoval so later reconciles and cleanup still find it.
#[tokio::test]
async fn global_view_failed_stale_removal_keeps_the_cluster_in_status() {
    let (ctx, mut api, _) = context(None);
    let mut gv = global_view(false);
    gv.spec.clusters.clear();
    gv.status = Some(GlobalViewStatus {
        clusters: vec![ClusterStatus {
            name: "x".into(),
            remote_write_configured: true,
            config_map_ref: Some(ConfigMapRef {
                name: "prometheus".into(),
                namespace: None,
                key: "prometheus.yml".into(),
                reload_url: None,
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    global_view_prefix(&mut api).await;
    let path = "/api/v1/namespaces/orrery/configmaps/prometheus";
    let s = expect(&mut api, Method::GET, path).await;
    respond(
        s.send,
        200,
        &config_map(
            "orrery",
            "remote_write:\n- name: orrery-global-x\n  url: http://r/api/v1/receive\n",
        ),
    );
    let s = expect(&mut api, Method::PUT, path).await;
    respond(s.send, 500, &status(500, "InternalError", "etcd timeout"));
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    let clusters = body["status"]["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "{body}");
    assert_eq!(clusters[0]["name"], "x");
    assert_eq!(clusters[0]["pendingRemoval"], true);
    assert_eq!(clusters[0]["configMapRef"]["name"], "prometheus");
    reconciler.await.unwrap().unwrap();
}

/// D19: a ReceiveCluster being deleted is left to the garbage collector: no requests.
#[tokio::test]
async fn receive_cluster_being_deleted_makes_no_requests() {
    let (ctx, mut api, _) = context(None);
    let mut rc = receive_cluster();
    rc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let action = receive::reconcile(Arc::new(rc), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(api.next_request().await.is_none());
}

/// D11: a GlobalView whose querier Service apply is refused shows it in status and Events.
#[tokio::test]
async fn global_view_failure_is_reported_on_the_object() {
    let (ctx, mut api, _) = context(None);
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(global_view(false)), ctx));
    let s = expect(
        &mut api,
        Method::GET,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters",
    )
    .await;
    respond(
        s.send,
        200,
        &json!({"apiVersion": "orrery.dev/v1alpha1", "kind": "ReceiveClusterList", "metadata": {}, "items": []}),
    );
    expect_apply(
        &mut api,
        "/apis/apps/v1/namespaces/orrery/deployments/global-query",
        json!({}),
    )
    .await;
    let s = expect(
        &mut api,
        Method::PATCH,
        "/api/v1/namespaces/orrery/services/global-query",
    )
    .await;
    respond(s.send, 422, &status(422, "Invalid", "denied by a webhook"));
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let ready = st.body["status"]["conditions"][0].clone();
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ReconcileError");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("denied by a webhook")
    );
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    expect_event(&mut api, "ReconcileError").await;
    reconciler.await.unwrap().expect_err("the reconcile failed");
}

/// D10: a prometheus.yml whose remote_write the operator cannot edit safely (an
/// explicit null here) is left untouched (no PUT); the cluster reports
/// RemoteWriteConfigured=False with reason ConfigNotEditable and a Warning Event says why.
#[tokio::test]
async fn global_view_refuses_a_prometheus_yml_it_cannot_edit_safely() {
    let (ctx, mut api, _, probe) = context_with_probe(None);
    let reconciler = tokio::spawn(global_view::reconcile(
        Arc::new(global_view_config_map(false, None)),
        ctx,
    ));
    global_view_prefix(&mut api).await;
    let path = "/api/v1/namespaces/orrery/configmaps/prometheus";
    let s = expect(&mut api, Method::GET, path).await;
    respond(
        s.send,
        200,
        &config_map("orrery", "global: {}\nremote_write: ~ # none\n"),
    );
    let note = expect_event(&mut api, "ConfigNotEditable").await;
    assert!(note.contains("cannot be edited safely"), "{note}");
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let c = cluster_condition(&st.body, "RemoteWriteConfigured").clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "ConfigNotEditable", "{c}");
    reconciler.await.unwrap().unwrap();
    assert!(probe.reloads.lock().unwrap().is_empty());
}

/// The entry name carries the namespace; an entry written under the old name
/// (`orrery-<globalview>-<cluster>`) is replaced in place, in one PUT, and the
/// ConfigMap's other bytes are kept. Prometheus is reloaded after the change.
#[tokio::test]
async fn global_view_migrates_a_legacy_named_entry_in_place() {
    let (ctx, mut api, _, probe) = context_with_probe(None);
    let reconciler = tokio::spawn(global_view::reconcile(
        Arc::new(global_view_config_map(false, None)),
        ctx,
    ));
    global_view_prefix(&mut api).await;
    let path = "/api/v1/namespaces/orrery/configmaps/prometheus";
    let head = "# team config\nglobal:\n  scrape_interval: 15s\nremote_write:\n- name: user\n  url: http://u/w\n";
    let legacy = "- name: orrery-global-batcave\n  url: http://old:19291/api/v1/receive\n  write_relabel_configs:\n  - target_label: cluster\n    replacement: batcave\n    action: replace\n";
    let tail = "# end\n";
    let s = expect(&mut api, Method::GET, path).await;
    respond(
        s.send,
        200,
        &config_map("orrery", &format!("{head}{legacy}{tail}")),
    );
    let s = expect(&mut api, Method::PUT, path).await;
    let new = s.body["data"]["prometheus.yml"]
        .as_str()
        .unwrap()
        .to_string();
    let echoed = s.body.clone();
    respond(s.send, 200, &echoed);
    assert!(new.starts_with(head), "{new}");
    assert!(new.ends_with(&format!("\n{tail}")), "{new}");
    assert!(!new.contains("orrery-global-batcave"), "{new}");
    assert!(
        new.contains("- name: \"orrery-orrery.global.batcave\""),
        "{new}"
    );
    assert!(
        new.contains("url: \"http://main-receive.orrery.svc:19291/api/v1/receive\""),
        "{new}"
    );
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    assert_eq!(
        cluster_condition(&st.body, "RemoteWriteConfigured")["status"],
        "True"
    );
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    reconciler.await.unwrap().unwrap();
    assert_eq!(
        *probe.reloads.lock().unwrap(),
        vec!["http://prometheus.orrery.svc:9090/-/reload".to_string()]
    );
}

/// A GlobalView whose one cluster runs an orrery sidecar next to its Prometheus.
fn global_view_sidecar() -> GlobalView {
    let mut gv = global_view(false);
    let c = &mut gv.spec.clusters[0];
    c.mode = ClusterMode::Sidecar;
    c.sidecar = Some(SidecarSpec {
        image: Some("orrery:sidecar".into()),
        object_storage_config: Some(SecretKeySelector {
            name: "bucket".into(),
            key: "objstore.yml".into(),
        }),
        endpoint: None,
        resources: None,
        local_read: false,
    });
    gv
}

const PROM_PATH: &str = "/apis/monitoring.coreos.com/v1/namespaces/monitoring/prometheuses/batcave";
const SIDECAR_SVC: &str = "/api/v1/namespaces/monitoring/services/batcave-orrery-sidecar";

/// The Prometheus of [`prometheus`] with a volume claim template (so the data volume is
/// mounted with Prometheus Operator's `prometheus-db` sub-path) and no remote_write.
fn prometheus_with_storage(rv: &str) -> Value {
    let mut p = prometheus(rv, json!([]));
    p["spec"].as_object_mut().unwrap().remove("remoteWrite");
    p["spec"]["storage"] =
        json!({"volumeClaimTemplate": {"spec": {"resources": {"requests": {"storage": "10Gi"}}}}});
    p["spec"]["externalLabels"] = json!({"region": "eu"});
    p
}

/// The container the operator must add, spelled out.
fn expected_sidecar_container() -> Value {
    json!({
        "name": "orrery-sidecar",
        "image": "orrery:sidecar",
        "env": [{"name": "OBJSTORE_CONFIG",
                 "valueFrom": {"secretKeyRef": {"name": "bucket", "key": "objstore.yml"}}}],
        "args": ["sidecar", "--prometheus.url=http://localhost:9090", "--tsdb.path=/prometheus",
                 "--grpc-address=0.0.0.0:10901", "--http-address=0.0.0.0:10902",
                 "--objstore.config=$(OBJSTORE_CONFIG)"],
        "ports": [{"name": "orrery-grpc", "containerPort": 10901, "protocol": "TCP"},
                  {"name": "orrery-http", "containerPort": 10902, "protocol": "TCP"}],
        "volumeMounts": [{"name": "prometheus-batcave-db", "mountPath": "/prometheus",
                          "subPath": "prometheus-db"}],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "orrery-http"},
                           "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}}
    })
}

/// Answers the querier Deployment and Service applies of a sidecar-mode view,
/// checking the querier reads the sidecars and deduplicates Prometheus's replicas.
async fn sidecar_view_prefix(api: &mut ApiHandle) {
    let s = expect(
        api,
        Method::GET,
        "/apis/orrery.dev/v1alpha1/namespaces/orrery/receiveclusters",
    )
    .await;
    respond(
        s.send,
        200,
        &json!({"apiVersion": "orrery.dev/v1alpha1", "kind": "ReceiveClusterList", "metadata": {}, "items": [receive_cluster()]}),
    );
    let dep = expect_apply(
        api,
        "/apis/apps/v1/namespaces/orrery/deployments/global-query",
        json!({"status": {"readyReplicas": 1}}),
    )
    .await;
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(
        args,
        json!([
            "query",
            "--http-address=0.0.0.0:10902",
            "--grpc-address=0.0.0.0:10901",
            "--endpoint=dns+main-receive-headless.orrery.svc:10901",
            "--endpoint=dns+batcave-orrery-sidecar.monitoring.svc:10901",
            "--query.replica-label=receive_replica",
            "--query.replica-label=prometheus_replica",
        ])
    );
    expect_apply(
        api,
        "/api/v1/namespaces/orrery/services/global-query",
        json!({}),
    )
    .await;
}

/// `mode: sidecar`: the exact edit of the Prometheus (container, 2h blocks through
/// disableCompaction, the cluster external label, ownership annotations, nothing else
/// touched), the headless Service next to it, the querier endpoint; a second reconcile
/// over the edited object writes nothing.
#[tokio::test]
async fn global_view_sidecar_mode_adds_the_container_and_is_idempotent() {
    let (ctx, mut api, _) = context(Some(3.2));
    let reconciler = tokio::spawn(global_view::reconcile(
        Arc::new(global_view_sidecar()),
        ctx.clone(),
    ));
    sidecar_view_prefix(&mut api).await;
    let s = expect(&mut api, Method::GET, PROM_PATH).await;
    let original = prometheus_with_storage("4");
    respond(s.send, 200, &original);
    let s = expect(&mut api, Method::PUT, PROM_PATH).await;
    let mut want = original.clone();
    want["spec"]["containers"] = json!([expected_sidecar_container()]);
    want["spec"]["disableCompaction"] = json!(true);
    want["spec"]["externalLabels"]["cluster"] = json!("batcave");
    want["metadata"]["annotations"]["orrery.dev/sidecar-owner"] =
        json!("orrery-orrery.global.batcave");
    want["metadata"]["annotations"]["orrery.dev/sidecar-set"] =
        json!("disableCompaction,externalLabels.cluster");
    assert_eq!(s.body, want);
    let edited = s.body.clone();
    respond(s.send, 200, &edited);
    let svc = expect_apply(&mut api, SIDECAR_SVC, json!({})).await;
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app.kubernetes.io/name": "prometheus", "prometheus": "batcave"})
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 10901);
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view_sidecar()).unwrap(),
    );
    let c = &body["status"]["clusters"][0];
    assert_eq!(c["mode"], "sidecar");
    assert_eq!(c["sidecarConfigured"], true);
    assert_eq!(c["remoteWriteConfigured"], false);
    let cond = cluster_condition(&body, "SidecarConfigured");
    assert_eq!(cond["status"], "True");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("dns+batcave-orrery-sidecar.monitoring.svc:10901"),
        "{cond}"
    );
    assert_eq!(
        body["status"]["endpoints"],
        json!([
            "dns+main-receive-headless.orrery.svc:10901",
            "dns+batcave-orrery-sidecar.monitoring.svc:10901"
        ])
    );
    assert_eq!(
        body["status"]["conditions"][0]["status"], "True",
        "{}",
        body["status"]["conditions"]
    );
    reconciler.await.unwrap().unwrap();

    // Again, over the edited object: no write to the Prometheus.
    let mut gv = global_view_sidecar();
    gv.status = serde_json::from_value(body["status"].clone()).unwrap();
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    sidecar_view_prefix(&mut api).await;
    let s = expect(&mut api, Method::GET, PROM_PATH).await;
    respond(s.send, 200, &edited);
    expect_apply(&mut api, SIDECAR_SVC, json!({})).await;
    // Status unchanged: not written either; the reconcile ends here.
    let action = reconciler.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

/// A Prometheus that already runs Prometheus Operator's Thanos sidecar is refused,
/// untouched, with the reason in the condition and an Event.
#[tokio::test]
async fn global_view_sidecar_mode_refuses_a_prometheus_with_spec_thanos() {
    let (ctx, mut api, _) = context(None);
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(global_view_sidecar()), ctx));
    sidecar_view_prefix(&mut api).await;
    let s = expect(&mut api, Method::GET, PROM_PATH).await;
    let mut p = prometheus_with_storage("4");
    p["spec"]["thanos"] = json!({"image": "quay.io/thanos/thanos:v0.39.2"});
    respond(s.send, 200, &p);
    let note = expect_event(&mut api, "SidecarNotApplicable").await;
    assert!(note.contains("spec.thanos"), "{note}");
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view_sidecar()).unwrap(),
    );
    assert_eq!(
        body["status"]["clusters"][0]["sidecarConfigured"],
        Value::Null
    );
    let cond = cluster_condition(&body, "SidecarConfigured");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "SidecarNotApplicable");
    reconciler.await.unwrap().unwrap();
}

/// Switching the cluster back to `mode: remoteWrite` takes the sidecar out (the
/// Prometheus is restored exactly, the Service deleted) before our remote_write entry
/// goes in.
#[tokio::test]
async fn global_view_switch_back_to_remote_write_removes_the_sidecar() {
    let (ctx, mut api, _) = context(Some(3.2));
    let mut gv = global_view(false);
    gv.status = Some(GlobalViewStatus {
        clusters: vec![ClusterStatus {
            name: "batcave".into(),
            mode: ClusterMode::Sidecar,
            sidecar_configured: true,
            prometheus_ref: gv.spec.clusters[0].prometheus_ref.clone(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    global_view_prefix(&mut api).await;
    // The sidecar comes out first.
    let original = prometheus_with_storage("8");
    let mut with_sidecar = original.clone();
    with_sidecar["spec"]["containers"] = json!([expected_sidecar_container()]);
    with_sidecar["spec"]["disableCompaction"] = json!(true);
    with_sidecar["spec"]["externalLabels"]["cluster"] = json!("batcave");
    with_sidecar["metadata"]["annotations"]["orrery.dev/sidecar-owner"] =
        json!("orrery-orrery.global.batcave");
    with_sidecar["metadata"]["annotations"]["orrery.dev/sidecar-set"] =
        json!("disableCompaction,externalLabels.cluster");
    let s = expect(&mut api, Method::GET, PROM_PATH).await;
    respond(s.send, 200, &with_sidecar);
    let s = expect(&mut api, Method::PUT, PROM_PATH).await;
    assert_eq!(s.body, original);
    let restored = s.body.clone();
    respond(s.send, 200, &restored);
    let s = expect(&mut api, Method::DELETE, SIDECAR_SVC).await;
    respond(
        s.send,
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    );
    // Then the remote_write entry.
    let s = expect(&mut api, Method::GET, PROM_PATH).await;
    respond(s.send, 200, &restored);
    let s = expect(&mut api, Method::PUT, PROM_PATH).await;
    let list = s.body["spec"]["remoteWrite"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "orrery-orrery.global.batcave");
    assert!(s.body["spec"].get("containers").is_none());
    let echoed = s.body.clone();
    respond(s.send, 200, &echoed);
    let st = expect(&mut api, Method::PATCH, GV_STATUS).await;
    let body = st.body.clone();
    respond(
        st.send,
        200,
        &serde_json::to_value(global_view(false)).unwrap(),
    );
    let c = &body["status"]["clusters"];
    assert_eq!(c.as_array().unwrap().len(), 1, "{c}");
    assert!(c[0].get("mode").is_none(), "{c}");
    assert_eq!(c[0]["remoteWriteConfigured"], true);
    reconciler.await.unwrap().unwrap();
}

/// Deleting a sidecar-mode GlobalView takes the sidecar out and deletes the Service
/// (already gone: fine) before the finalizer is dropped.
#[tokio::test]
async fn global_view_deletion_removes_the_sidecar() {
    let (ctx, mut api, _) = context(None);
    let mut gv = global_view_sidecar();
    gv.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let reconciler = tokio::spawn(global_view::reconcile(Arc::new(gv), ctx));
    let original = prometheus_with_storage("9");
    let mut with_sidecar = original.clone();
    with_sidecar["spec"]["containers"] = json!([expected_sidecar_container()]);
    with_sidecar["metadata"]["annotations"]["orrery.dev/sidecar-owner"] =
        json!("orrery-orrery.global.batcave");
    let s = expect(&mut api, Method::GET, PROM_PATH).await;
    respond(s.send, 200, &with_sidecar);
    let s = expect(&mut api, Method::PUT, PROM_PATH).await;
    assert_eq!(s.body, original);
    let echoed = s.body.clone();
    respond(s.send, 200, &echoed);
    let s = expect(&mut api, Method::DELETE, SIDECAR_SVC).await;
    respond(
        s.send,
        404,
        &status(
            404,
            "NotFound",
            "services \"batcave-orrery-sidecar\" not found",
        ),
    );
    expect_finalizer_removed(&mut api).await;
    assert_eq!(reconciler.await.unwrap().unwrap(), Action::await_change());
}
