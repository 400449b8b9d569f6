//! The files under `deploy/` are checked against what they describe: every expression of the
//! Grafana dashboard names a metric the real binary's `/metrics` serves (and groups by labels
//! those metrics carry), and HAProxy accepts its front's configuration as written.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use support::binary::Running;
use support::{admin_get, require};

/// Labels Prometheus adds to every series, or histograms have.
const ADDED: &[&str] = &["instance", "job", "le"];

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// Each metric family `/metrics` serves, with the labels its series carry.
fn families(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = out.entry(name.to_string()).or_default();
        if let Some(inner) = line[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split('}').next())
        {
            for pair in inner.split(',').filter(|p| !p.is_empty()) {
                labels.insert(pair.split('=').next().unwrap_or("").to_string());
            }
        }
    }
    out
}

/// The metric names in a PromQL expression (`wssbridge_…`, `process_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("wssbridge_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// The labels of every `by (…)` in an expression.
fn grouped_by(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .flat_map(|list| list.split(',').map(|l| l.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_names_a_metric_wssbridge_serves() {
    let echo = support::Backend::ws_echo().await;
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--to",
        &echo.address(),
    ]);
    // One WebSocket that has ended: its close is a series of its own.
    let mut ws = support::ws_connect(running.addr).await;
    support::echo(&mut ws, "hi").await;
    drop(ws);
    running.wait_for_line(&["ended_by"]).await;
    let admin_line = running.wait_for_line(&["admin:"]).await;
    let admin = support::binary::field(&admin_line, "addr")
        .unwrap()
        .parse()
        .unwrap();
    let (status, _, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let served = families(&body);

    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(deploy("grafana/wssbridge.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("an expression").to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in &names {
            let labels = served
                .get(name)
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not served: {:?}", served.keys()));
            for label in grouped_by(expr) {
                assert!(
                    labels.contains(&label) || ADDED.contains(&label.as_str()),
                    "{expr}: {name} has no label {label} ({labels:?})"
                );
            }
            used.insert(name.clone());
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "wssbridge_connections_active",
        "wssbridge_websockets_active",
        "wssbridge_tls_handshakes_total",
        "wssbridge_tls_handshake_duration_seconds_bucket",
        "wssbridge_responses_total",
        "wssbridge_bytes_total",
        "wssbridge_backend_up",
        "wssbridge_config_reloads_total",
        "wssbridge_certificate_expiry_timestamp_seconds",
        "wssbridge_websocket_closes_total",
        "wssbridge_websocket_messages_total",
        "wssbridge_websocket_duration_seconds_bucket",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn haproxy_accepts_the_fleet_front_as_written() {
    require(&[("haproxy", "haproxy")]);
    let out = std::process::Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(deploy("haproxy/haproxy.cfg"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let config = std::fs::read_to_string(deploy("haproxy/haproxy.cfg")).unwrap();
    for needed in [
        "mode tcp",
        "send-proxy-v2",
        "option httpchk GET /readyz",
        "check port 9090",
    ] {
        assert!(config.contains(needed), "{needed}");
    }
    let active: Vec<&str> = config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !active
            .iter()
            .any(|l| l.contains("on-marked-down shutdown-sessions")),
        "a drain must not be cut"
    );
}

/// The Kubernetes manifests as JSON values, parsed by PyYAML (no cluster here, and no schema
/// checker installs from the registries this machine reaches).
fn manifests(file: &str) -> Vec<serde_json::Value> {
    require(&[("python3", "python3")]);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(deploy(file))
        .output()
        .unwrap();
    serde_json::from_slice(&succeeded(out)).unwrap()
}

fn kind<'a>(all: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|m| m["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// A duration flag's seconds from the container's args (`--shutdown-grace=30s`).
fn seconds(args: &[String], flag: &str) -> u64 {
    let value = args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("no {flag}"));
    value.trim_end_matches('s').parse().unwrap()
}

#[test]
fn the_kubernetes_manifests_have_what_a_fleet_needs() {
    let all = manifests("kubernetes/wssbridge.yaml");
    let deployment = kind(&all, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    // The Node pods are found by DNS: every pod of the headless Service a backend.
    assert!(
        args.contains(&"--to=dns:chat.default.svc.cluster.local:3000".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--balance=ip-hash".to_string()), "{args:?}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    let grace = seconds(&args, "--shutdown-grace");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(pre_stop >= seconds(&args, "--shutdown-delay"));
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination > grace + pre_stop + 4, "{termination} s");
    let security = &container["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // Non-root on an unprivileged port needs no capability; the Service maps 443 to it.
    assert!(security["capabilities"]["add"].is_null(), "{security}");
    assert!(args.contains(&"--listen=:8443".to_string()), "{args:?}");
    assert_eq!(container["ports"][0]["containerPort"], 8443);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(
        pod["volumes"][0]["secret"]["secretName"].is_string(),
        "the certificate from a Secret"
    );
    assert!(args.iter().any(|a| a.starts_with("--cert-poll=")));
    assert!(args.iter().any(|a| a.starts_with("--accept-proxy-from=")));

    let service = kind(&all, "Service");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"],
        "*"
    );
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-type"],
        "external"
    );
    assert!(kind(&all, "PodDisruptionBudget")["spec"]["maxUnavailable"].is_number());

    // The container's flags are wssbridge's: `--check` accepts them (with the test PKI's
    // certificate in place of the Secret's files, and a backend address that resolves).
    let pki = support::pki();
    let checked: Vec<String> = args
        .iter()
        .map(|a| match a.split_once('=') {
            Some(("--cert", _)) => format!("--cert={}", pki.cert.display()),
            Some(("--key", _)) => format!("--key={}", pki.key.display()),
            _ => a.clone(),
        })
        .collect();
    let out = support::binary::wssbridge()
        .arg("--check")
        .args(&checked)
        .output()
        .unwrap();
    succeeded(out);
}

#[test]
fn the_node_pods_sit_behind_a_headless_service_wssbridge_discovers() {
    let all = manifests("kubernetes/chat.yaml");
    let service = kind(&all, "Service");
    assert_eq!(service["metadata"]["name"], "chat");
    assert_eq!(service["metadata"]["namespace"], "default");
    // A ClusterIP would put kube-proxy's per-connection choice between ip-hash and the pods.
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], false);
    assert_eq!(service["spec"]["ports"][0]["port"], 3000);
    assert_eq!(service["spec"]["ports"][0]["name"], "http");
    let selector = &service["spec"]["selector"];
    let deployment = kind(&all, "Deployment");
    assert_eq!(
        &deployment["spec"]["template"]["metadata"]["labels"]["app"], &selector["app"],
        "the Service selects the app's pods"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
}

/// A command's stdout, once it exited 0 (its stderr otherwise, in the failure).
fn succeeded(out: std::process::Output) -> Vec<u8> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    out.stdout
}
