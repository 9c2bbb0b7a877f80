//! Offline policy checks of the deployment artifacts: every `k8s/*.yaml` (multi-document) and
//! `docker-compose.yml`. Schema validity is `scripts/validate-deploy.sh`'s job; this file checks
//! what a schema cannot: hardening, probes that match the services' real endpoints, autoscaling
//! bounds, and the NetworkPolicy access matrix, recomputed from the policies themselves.

use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const NAMESPACE: &str = "audio-pipeline";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const UID: i64 = 10001;
/// Subcommands of the `pipeline` binary.
const SUBCOMMANDS: &[&str] = &["sensor", "algorithm-a", "algorithm-b", "data-writer", "rest-api", "live", "migrate"];
/// Queue consumers: health endpoint on APQ_HEALTH_BIND, port 8081.
const CONSUMERS: &[&str] = &["algorithm-a", "algorithm-b", "data-writer"];
/// Every `APQ_*` variable the services read (services/src/config.rs, telemetry.rs), to catch misspellings.
const KNOWN_APQ_VARS: &[&str] = &[
    "APQ_CONFIG",
    "APQ_LOG_FORMAT",
    "APQ_AMQP_URL",
    "APQ_NAMESPACE",
    "APQ_MAX_MESSAGE_BYTES",
    "APQ_DATABASE_URL",
    "APQ_DB_POOL_SIZE",
    "APQ_INSTANCE_ID",
    "APQ_HEALTH_BIND",
    "APQ_ALGORITHM_A_PREFETCH",
    "APQ_ALGORITHM_A_FAULT_DROP_EVERY",
    "APQ_ALGORITHM_B_PREFETCH",
    "APQ_ALGORITHM_B_FAULT_DROP_EVERY",
    "APQ_WRITER_BATCH_SIZE",
    "APQ_WRITER_FLUSH_INTERVAL_MS",
    "APQ_WRITER_CONNECTIONS",
    "APQ_WRITER_PREFETCH",
    "APQ_WRITER_FAULT_IGNORE_UNIQUE",
    "APQ_WRITER_FAULT_RETRY_REJECTED",
    "APQ_WRITER_FAULT_UNBOUNDED_PROCESSED_BY",
    "APQ_FAULT_BYTE_TRUNCATE_DETAIL",
    "APQ_RECONNECT_MIN_MS",
    "APQ_RECONNECT_MAX_MS",
    "APQ_HEARTBEAT_SECS",
    "APQ_FAULT_RANDOM_OUTPUT_IDS",
    "APQ_FAULT_BACKOFF_NO_RESET",
    "APQ_FAULT_NO_HEARTBEAT",
    "APQ_WRITER_WRITE_TIMEOUT_MS",
    "APQ_WRITER_CONNECT_TIMEOUT_MS",
    "APQ_WRITER_KEEPALIVE_IDLE_MS",
    "APQ_WRITER_SHUTDOWN_TIMEOUT_MS",
    "APQ_WRITER_FAULT_NO_DEADLINES",
    "APQ_API_FAULT_NO_CACHE_REFILL",
    "APQ_DB_WRITER_ROLE",
    "APQ_DB_WRITER_PASSWORD",
    "APQ_DB_READER_ROLE",
    "APQ_DB_READER_PASSWORD",
    "APQ_API_BIND",
    "APQ_API_TOKENS",
    "APQ_API_RATE_LIMIT_PER_SEC",
    "APQ_API_RATE_LIMIT_BURST",
    "APQ_API_DEFAULT_LIMIT",
    "APQ_API_MAX_LIMIT",
    "APQ_API_FAULT_SKIP_AUTH",
    "APQ_SENSOR_ID",
    "APQ_SENSOR_SIGNAL",
    "APQ_SENSOR_FREQUENCY_HZ",
    "APQ_SENSOR_AMPLITUDE",
    "APQ_SENSOR_SAMPLE_RATE",
    "APQ_SENSOR_CHUNK_MS",
    "APQ_SENSOR_RATE_PER_SEC",
    "APQ_SENSOR_COUNT",
    "APQ_SENSOR_DURATION_SECS",
    "APQ_SENSOR_WAV_PATH",
];
/// Fault-injection switches that must never be set in a deployment.
const FAULT_VARS: &[&str] = &[
    "APQ_ALGORITHM_A_FAULT_DROP_EVERY",
    "APQ_ALGORITHM_B_FAULT_DROP_EVERY",
    "APQ_WRITER_FAULT_IGNORE_UNIQUE",
    "APQ_WRITER_FAULT_RETRY_REJECTED",
    "APQ_WRITER_FAULT_UNBOUNDED_PROCESSED_BY",
    "APQ_FAULT_BYTE_TRUNCATE_DETAIL",
    "APQ_API_FAULT_SKIP_AUTH",
    "APQ_FAULT_RANDOM_OUTPUT_IDS",
    "APQ_FAULT_BACKOFF_NO_RESET",
    "APQ_FAULT_NO_HEARTBEAT",
    "APQ_WRITER_FAULT_NO_DEADLINES",
    "APQ_API_FAULT_NO_CACHE_REFILL",
];
/// Variables that carry credentials: in Kubernetes they must come from a Secret.
const SECRET_VARS: &[&str] = &[
    "APQ_AMQP_URL",
    "APQ_DATABASE_URL",
    "APQ_API_TOKENS",
    "QA_AMQP_URL",
    "QA_DATABASE_URL",
    "QA_API_TOKEN",
    "POSTGRES_PASSWORD",
    "APQ_DB_WRITER_PASSWORD",
    "APQ_DB_READER_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
];

// ------------------------------------------------------------------------------------------------
// Loading and small accessors

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One Kubernetes object and the file it came from.
struct Obj {
    file: String,
    v: Value,
}

impl Obj {
    fn kind(&self) -> &str {
        s(&self.v, &["kind"]).unwrap_or("")
    }
    fn name(&self) -> &str {
        s(&self.v, &["metadata", "name"]).unwrap_or("")
    }
    fn id(&self) -> String {
        format!("{} {}/{}", self.file, self.kind(), self.name())
    }
}

fn k8s_objects() -> Vec<Obj> {
    let dir = repo_root().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "expected manifests in {}, found none", dir.display());
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = format!("k8s/{}", path.file_name().unwrap().to_string_lossy());
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"));
            if !v.is_null() {
                out.push(Obj { file: file.clone(), v });
            }
        }
    }
    out
}

fn compose() -> Value {
    let path = repo_root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    v.apply_merge().expect("docker-compose.yml: `<<` merge keys resolve");
    v
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}
fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}
fn i(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(Value::as_i64)
}
fn b(v: &Value, path: &[&str]) -> Option<bool> {
    at(v, path).and_then(Value::as_bool)
}
fn seq<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).and_then(Value::as_sequence).map(Vec::as_slice).unwrap_or(&[])
}
fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?))).collect())
        .unwrap_or_default()
}
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn of_kind<'a>(objs: &'a [Obj], kind: &str) -> Vec<&'a Obj> {
    objs.iter().filter(|o| o.kind() == kind).collect()
}
fn find<'a>(objs: &'a [Obj], kind: &str, name: &str) -> &'a Obj {
    objs.iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("expected a {kind} named {name:?} in k8s/, found none"))
}

/// Pod specs of every workload kind.
fn pod_spec(o: &Obj) -> Option<&Value> {
    match o.kind() {
        "Deployment" | "StatefulSet" | "Job" | "DaemonSet" | "ReplicaSet" => at(&o.v, &["spec", "template", "spec"]),
        "CronJob" => at(&o.v, &["spec", "jobTemplate", "spec", "template", "spec"]),
        "Pod" => at(&o.v, &["spec"]),
        _ => None,
    }
}
fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    seq(pod, &["initContainers"]).iter().chain(seq(pod, &["containers"]))
}
fn workloads(objs: &[Obj]) -> Vec<(&Obj, &Value)> {
    objs.iter().filter_map(|o| pod_spec(o).map(|p| (o, p))).collect()
}
fn env_of(c: &Value) -> BTreeMap<String, &Value> {
    seq(c, &["env"]).iter().filter_map(|e| Some((s(e, &["name"])?.to_string(), e))).collect()
}
fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    seq(c, &["env"]).iter().find(|e| s(e, &["name"]) == Some(name)).and_then(|e| s(e, &["value"]))
}

// ------------------------------------------------------------------------------------------------
// Workload hardening

#[test]
fn every_workload_container_has_cpu_and_memory_requests_and_limits() {
    let objs = k8s_objects();
    let loads = workloads(&objs);
    assert!(
        loads.len() >= 8,
        "expected at least 8 workloads (4 Deployments, 2 StatefulSets, 2 Jobs), found {}",
        loads.len()
    );
    let mut problems = Vec::new();
    for (o, pod) in loads {
        for c in containers(pod) {
            for section in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    if at(c, &["resources", section, res]).is_none() {
                        problems.push(format!(
                            "{} container {:?}: expected resources.{section}.{res}, found none",
                            o.id(),
                            s(c, &["name"]).unwrap_or("?")
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "resource problems:\n{}", problems.join("\n"));
}

#[test]
fn every_workload_container_runs_with_the_restricted_security_context() {
    let objs = k8s_objects();
    let mut problems = Vec::new();
    for (o, pod) in workloads(&objs) {
        let pod_sc = at(pod, &["securityContext"]);
        for c in containers(pod) {
            let who = format!("{} container {:?}", o.id(), s(c, &["name"]).unwrap_or("?"));
            // Container settings win over the pod's for the fields both may set.
            let eff = |k: &str| at(c, &["securityContext", k]).or_else(|| pod_sc.and_then(|p| p.get(k)));
            let mut expect = |what: &str, ok: bool, actual: String| {
                if !ok {
                    problems.push(format!("{who}: expected {what}, found {actual}"));
                }
            };
            let v = eff("runAsNonRoot");
            expect("runAsNonRoot: true", v.and_then(Value::as_bool) == Some(true), format!("{v:?}"));
            let v = eff("runAsUser");
            expect("runAsUser: 10001", v.and_then(Value::as_i64) == Some(UID), format!("{v:?}"));
            let v = eff("seccompProfile").and_then(|p| s(p, &["type"]));
            expect("seccompProfile.type: RuntimeDefault", v == Some("RuntimeDefault"), format!("{v:?}"));
            let v = b(c, &["securityContext", "readOnlyRootFilesystem"]);
            expect("readOnlyRootFilesystem: true", v == Some(true), format!("{v:?}"));
            let v = b(c, &["securityContext", "allowPrivilegeEscalation"]);
            expect("allowPrivilegeEscalation: false", v == Some(false), format!("{v:?}"));
            let v = b(c, &["securityContext", "privileged"]);
            expect("privileged unset or false", v != Some(true), format!("{v:?}"));
            let drop: Vec<&str> =
                seq(c, &["securityContext", "capabilities", "drop"]).iter().filter_map(Value::as_str).collect();
            expect("capabilities.drop: [ALL]", drop.contains(&"ALL"), format!("{drop:?}"));
            let add = seq(c, &["securityContext", "capabilities", "add"]);
            expect("no capabilities.add", add.is_empty(), format!("{add:?}"));
        }
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            if b(pod, &[host]) == Some(true) {
                problems.push(format!("{}: expected {host} unset or false, found true", o.id()));
            }
        }
    }
    assert!(problems.is_empty(), "securityContext problems:\n{}", problems.join("\n"));
}

#[test]
fn workloads_are_labelled_namespaced_and_configured_with_known_settings() {
    let objs = k8s_objects();
    let mut problems = Vec::new();
    for o in &objs {
        if o.kind() != "Namespace" && s(&o.v, &["metadata", "namespace"]) != Some(NAMESPACE) {
            problems.push(format!(
                "{}: expected metadata.namespace {NAMESPACE:?}, found {:?}",
                o.id(),
                s(&o.v, &["metadata", "namespace"])
            ));
        }
    }
    for (o, pod) in workloads(&objs) {
        let tpl = labels(at(&o.v, &["spec", "template", "metadata", "labels"]));
        if tpl.get(NAME_LABEL).map(String::as_str) != Some(o.name()) {
            problems.push(format!(
                "{}: expected pod label {NAME_LABEL}={}, found {:?}",
                o.id(),
                o.name(),
                tpl.get(NAME_LABEL)
            ));
        }
        if let Some(sel) = at(&o.v, &["spec", "selector"])
            && !selector_matches(sel, &tpl)
        {
            problems.push(format!("{}: spec.selector does not select its own pod labels {tpl:?}", o.id()));
        }
        for c in containers(pod) {
            let image = s(c, &["image"]).unwrap_or("");
            for (name, e) in env_of(c) {
                if name.starts_with("APQ_") && !KNOWN_APQ_VARS.contains(&name.as_str()) {
                    problems
                        .push(format!("{}: unknown setting {name} (expected one of services/src/config.rs)", o.id()));
                }
                if FAULT_VARS.contains(&name.as_str()) {
                    problems.push(format!("{}: fault-injection switch {name} must not be deployed", o.id()));
                }
                if SECRET_VARS.contains(&name.as_str()) && at(e, &["valueFrom", "secretKeyRef"]).is_none() {
                    problems.push(format!(
                        "{}: expected {name} from valueFrom.secretKeyRef, found {:?}",
                        o.id(),
                        e.get("value")
                    ));
                }
            }
            if image.contains("/pipeline:") {
                let args: Vec<&str> = seq(c, &["args"]).iter().filter_map(Value::as_str).collect();
                let sub = args.first().copied().unwrap_or("");
                // The one init container allowed: the schema and roles, before the writer.
                let init_migrate = s(c, &["name"]) == Some("migrate") && sub == "migrate" && o.name() == "data-writer";
                if !init_migrate && (!SUBCOMMANDS.contains(&sub) || sub != o.name()) {
                    problems.push(format!("{}: expected args [{:?}], found {args:?}", o.id(), o.name()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "labelling/config problems:\n{}", problems.join("\n"));
}

#[test]
fn every_secret_reference_resolves_to_a_defined_secret_key() {
    let objs = k8s_objects();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sec in of_kind(&objs, "Secret") {
        let set = keys.entry(sec.name().to_string()).or_default();
        for section in ["stringData", "data"] {
            if let Some(m) = at(&sec.v, &[section]).and_then(Value::as_mapping) {
                set.extend(m.keys().filter_map(Value::as_str).map(String::from));
            }
        }
    }
    let mut refs = 0;
    let mut problems = Vec::new();
    for (o, pod) in workloads(&objs) {
        for c in containers(pod) {
            for (name, e) in env_of(c) {
                if let Some(r) = at(e, &["valueFrom", "secretKeyRef"]) {
                    refs += 1;
                    let (sn, sk) = (s(r, &["name"]).unwrap_or(""), s(r, &["key"]).unwrap_or(""));
                    if !keys.get(sn).is_some_and(|k| k.contains(sk)) {
                        problems.push(format!("{}: {name} refers to secret {sn:?} key {sk:?}, which k8s/ does not define (defined: {keys:?})", o.id()));
                    }
                }
            }
        }
    }
    assert!(refs >= 10, "expected credentials to be wired through secretKeyRef (>= 10 references), found {refs}");
    assert!(problems.is_empty(), "secret reference problems:\n{}", problems.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// Deployments, probes, scaling

#[test]
fn deployments_probe_the_health_endpoints_the_services_serve() {
    let objs = k8s_objects();
    let names: BTreeSet<&str> = of_kind(&objs, "Deployment").iter().map(|o| o.name()).collect();
    let expected: BTreeSet<&str> = ["algorithm-a", "algorithm-b", "data-writer", "rest-api"].into();
    assert_eq!(names, expected, "expected exactly these Deployments (left: actual, right: expected)");
    let mut problems = Vec::new();
    for name in expected {
        let o = find(&objs, "Deployment", name);
        let pod = pod_spec(o).expect("pod spec");
        let c = &seq(pod, &["containers"])[0];
        let (port, bind_var) =
            if CONSUMERS.contains(&name) { (8081, "APQ_HEALTH_BIND") } else { (8000, "APQ_API_BIND") };
        let bind = env_value(c, bind_var);
        if bind != Some(&format!("0.0.0.0:{port}")) {
            problems.push(format!("{name}: expected env {bind_var}=0.0.0.0:{port}, found {bind:?}"));
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let actual_path = s(c, &[probe, "httpGet", "path"]);
            let actual_port = at(c, &[probe, "httpGet", "port"]).map(|p| resolve_port(c, p));
            if actual_path != Some(path) || actual_port != Some(Some(port)) {
                problems.push(format!(
                    "{name}: expected {probe} httpGet {path} on port {port}, found path {actual_path:?} port {actual_port:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "probe problems:\n{}", problems.join("\n"));
}

#[test]
fn every_deployment_is_scraped_by_prometheus_on_the_port_serving_metrics() {
    let objs = k8s_objects();
    let mut problems = Vec::new();
    for o in of_kind(&objs, "Deployment") {
        let name = o.name();
        let port = if CONSUMERS.contains(&name) { "8081" } else { "8000" };
        let annotations = at(&o.v, &["spec", "template", "metadata", "annotations"]);
        let get = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);
        let found = (get("prometheus.io/scrape"), get("prometheus.io/port"), get("prometheus.io/path"));
        if found != (Some("true"), Some(port), Some("/metrics")) {
            problems.push(format!(
                "{}: expected pod annotations prometheus.io/scrape=true, port={port}, path=/metrics; found {found:?}",
                o.id()
            ));
        }
        let c = &seq(pod_spec(o).expect("pod spec"), &["containers"])[0];
        if !seq(c, &["ports"])
            .iter()
            .any(|cp| i(cp, &["containerPort"]).map(|p| p.to_string()).as_deref() == Some(port))
        {
            problems.push(format!("{}: the scrape port {port} is not a declared containerPort", o.id()));
        }
    }
    assert!(problems.is_empty(), "scrape problems:\n{}", problems.join("\n"));
}

/// A probe port is a number or the name of one of the container's ports.
fn resolve_port(c: &Value, p: &Value) -> Option<i64> {
    if let Some(n) = p.as_i64() {
        return Some(n);
    }
    let name = p.as_str()?;
    seq(c, &["ports"]).iter().find(|cp| s(cp, &["name"]) == Some(name)).and_then(|cp| i(cp, &["containerPort"]))
}

#[test]
fn algorithm_autoscalers_have_the_agreed_bounds() {
    let objs = k8s_objects();
    for (target, min, max, cpu) in [("algorithm-a", 2, 10, 70), ("algorithm-b", 2, 8, 70)] {
        let hpas: Vec<&Obj> = of_kind(&objs, "HorizontalPodAutoscaler")
            .into_iter()
            .filter(|h| s(&h.v, &["spec", "scaleTargetRef", "name"]) == Some(target))
            .collect();
        assert_eq!(hpas.len(), 1, "expected exactly one HPA targeting {target}, found {}", hpas.len());
        let h = &hpas[0].v;
        assert_eq!(s(h, &["apiVersion"]), Some("autoscaling/v2"), "{target}: HPA apiVersion");
        assert_eq!(s(h, &["spec", "scaleTargetRef", "kind"]), Some("Deployment"), "{target}: HPA target kind");
        find(&objs, "Deployment", target);
        let actual = (i(h, &["spec", "minReplicas"]), i(h, &["spec", "maxReplicas"]));
        assert_eq!(
            actual,
            (Some(min), Some(max)),
            "{target}: expected HPA (min, max) = ({min}, {max}), found {actual:?}"
        );
        let target_cpu = seq(h, &["spec", "metrics"]).iter().find_map(|m| {
            (s(m, &["type"]) == Some("Resource")
                && s(m, &["resource", "name"]) == Some("cpu")
                && s(m, &["resource", "target", "type"]) == Some("Utilization"))
            .then(|| i(m, &["resource", "target", "averageUtilization"]))
            .flatten()
        });
        assert_eq!(target_cpu, Some(cpu), "{target}: expected CPU averageUtilization {cpu}%, found {target_cpu:?}");
        let replicas = i(&find(&objs, "Deployment", target).v, &["spec", "replicas"]);
        assert!(
            replicas.is_none_or(|r| r >= min),
            "{target}: Deployment replicas {replicas:?} below HPA minimum {min}"
        );
    }
}

#[test]
fn data_writer_runs_two_replicas_without_an_autoscaler() {
    let objs = k8s_objects();
    let replicas = i(&find(&objs, "Deployment", "data-writer").v, &["spec", "replicas"]);
    assert_eq!(replicas, Some(2), "data-writer: expected spec.replicas 2, found {replicas:?}");
    let hpa = of_kind(&objs, "HorizontalPodAutoscaler")
        .into_iter()
        .any(|h| s(&h.v, &["spec", "scaleTargetRef", "name"]) == Some("data-writer"));
    assert!(!hpa, "data-writer: expected no HPA (fixed 2 replicas), found one");
}

#[test]
fn disruption_budgets_protect_every_scaled_component() {
    let objs = k8s_objects();
    for name in ["algorithm-a", "algorithm-b", "data-writer", "rest-api"] {
        let pod_labels = labels(at(&find(&objs, "Deployment", name).v, &["spec", "template", "metadata", "labels"]));
        let pdbs: Vec<&Obj> = of_kind(&objs, "PodDisruptionBudget")
            .into_iter()
            .filter(|p| at(&p.v, &["spec", "selector"]).is_some_and(|sel| selector_matches(sel, &pod_labels)))
            .collect();
        assert_eq!(
            pdbs.len(),
            1,
            "{name}: expected exactly one PodDisruptionBudget selecting its pods, found {}",
            pdbs.len()
        );
        let p = &pdbs[0].v;
        let min = i(p, &["spec", "minAvailable"]);
        let max_unavail = at(p, &["spec", "maxUnavailable"]);
        assert!(
            min.is_some_and(|m| m >= 1) || max_unavail.is_some(),
            "{name}: expected minAvailable >= 1 (or maxUnavailable), found minAvailable {min:?}"
        );
    }
}

#[test]
fn broker_and_database_stay_inside_the_cluster() {
    let objs = k8s_objects();
    for name in ["rabbitmq", "postgres"] {
        let svc = find(&objs, "Service", name);
        let ty = s(&svc.v, &["spec", "type"]).unwrap_or("ClusterIP");
        assert_eq!(ty, "ClusterIP", "{name}: expected Service type ClusterIP (not LoadBalancer/NodePort), found {ty}");
        assert_eq!(
            s(&svc.v, &["spec", "clusterIP"]),
            Some("None"),
            "{name}: expected a headless Service (clusterIP: None)"
        );
        let sts = find(&objs, "StatefulSet", name);
        assert_eq!(s(&sts.v, &["spec", "serviceName"]), Some(name), "{name}: StatefulSet serviceName");
        assert!(
            !seq(&sts.v, &["spec", "volumeClaimTemplates"]).is_empty(),
            "{name}: expected volumeClaimTemplates, found none"
        );
    }
    for svc in of_kind(&objs, "Service") {
        let ty = s(&svc.v, &["spec", "type"]).unwrap_or("ClusterIP");
        assert!(
            svc.name() == "rest-api" || ty == "ClusterIP",
            "{}: only ClusterIP Services expected, found {ty}",
            svc.id()
        );
    }
    let ingresses = of_kind(&objs, "Ingress");
    assert_eq!(ingresses.len(), 1, "expected one Ingress (rest-api), found {}", ingresses.len());
    let ing = &ingresses[0].v;
    assert_eq!(s(ing, &["apiVersion"]), Some("networking.k8s.io/v1"), "Ingress apiVersion");
    assert!(!seq(ing, &["spec", "tls"]).is_empty(), "Ingress: expected a tls section, found none");
    let rps = s(ing, &["metadata", "annotations", "nginx.ingress.kubernetes.io/limit-rps"]);
    assert!(
        rps.is_some_and(|v| v.parse::<u32>().is_ok_and(|n| n > 0)),
        "Ingress: expected nginx limit-rps > 0, found {rps:?}"
    );
    for rule in seq(ing, &["spec", "rules"]) {
        for p in seq(rule, &["http", "paths"]) {
            let backend = (s(p, &["backend", "service", "name"]), i(p, &["backend", "service", "port", "number"]));
            assert_eq!(
                backend,
                (Some("rest-api"), Some(8000)),
                "Ingress: expected every path to route to rest-api:8000"
            );
        }
    }
}

#[test]
fn jobs_run_the_suite_and_the_load_runner_against_the_deployment() {
    let objs = k8s_objects();
    let harness = find(&objs, "Job", "harness");
    let c = &seq(pod_spec(harness).unwrap(), &["containers"])[0];
    assert_eq!(env_value(c, "QA_PROFILE"), Some("external"), "harness Job: QA_PROFILE");
    assert_eq!(env_value(c, "QA_API_URL"), Some("http://rest-api:8000"), "harness Job: QA_API_URL");
    let load = find(&objs, "Job", "load");
    assert!(i(&load.v, &["spec", "parallelism"]).is_some_and(|p| p > 1), "load Job: expected parallelism > 1");
    let c = &seq(pod_spec(load).unwrap(), &["containers"])[0];
    let cmd: Vec<&str> = seq(c, &["command"]).iter().chain(seq(c, &["args"])).filter_map(Value::as_str).collect();
    let host = cmd.iter().position(|a| *a == "--host").and_then(|p| cmd.get(p + 1)).copied();
    assert_eq!((cmd.first().copied(), host), (Some("load"), Some("http://rest-api:8000")), "load Job command {cmd:?}");
}

/// Issue #14: the load Job is an Indexed Job of workers that share users and rate by completion
/// index, meet in a results database of their own (reachable by them alone) and merge at the end.
#[test]
fn load_job_is_an_indexed_distributed_run_with_its_own_results_database() {
    let objs = k8s_objects();
    let job = find(&objs, "Job", "load");
    let spec = at(&job.v, &["spec"]).expect("load Job spec");
    assert_eq!(s(spec, &["completionMode"]), Some("Indexed"), "load Job: completionMode");
    let (parallelism, completions) = (i(spec, &["parallelism"]), i(spec, &["completions"]));
    assert!(parallelism.is_some_and(|p| p > 1), "load Job: expected parallelism > 1, found {parallelism:?}");
    assert_eq!(parallelism, completions, "load Job: every index runs at once (parallelism = completions)");
    assert_eq!(i(spec, &["backoffLimit"]), Some(0), "load Job: a failed worker must fail the run, not be retried");
    assert!(i(spec, &["activeDeadlineSeconds"]).is_some(), "load Job: expected activeDeadlineSeconds");
    let pod = pod_spec(job).expect("load Job pod spec");
    assert_eq!(s(pod, &["restartPolicy"]), Some("Never"), "load Job: restartPolicy");
    let c = &seq(pod, &["containers"])[0];
    let cmd: Vec<&str> = seq(c, &["command"]).iter().chain(seq(c, &["args"])).filter_map(Value::as_str).collect();
    let after = |flag: &str| cmd.iter().position(|a| *a == flag).and_then(|p| cmd.get(p + 1)).copied();
    assert!(
        cmd.contains(&"worker") && cmd.contains(&"--merge"),
        "load Job: expected `load … worker … --merge`, found {cmd:?}"
    );
    for flag in ["--total-users", "--total-rate", "--window"] {
        assert!(after(flag).is_some(), "load Job: expected {flag} in {cmd:?}");
    }
    // Every worker must agree with the Job on how many workers there are.
    let workers = env_value(c, "LOAD_WORKERS").and_then(|v| v.parse::<i64>().ok());
    assert_eq!(workers, parallelism, "load Job: env LOAD_WORKERS must equal spec.parallelism");
    let env = env_of(c);
    let run_id = env.get("LOAD_RUN_ID").and_then(|e| s(e, &["valueFrom", "fieldRef", "fieldPath"]));
    assert_eq!(
        run_id,
        Some("metadata.labels['batch.kubernetes.io/controller-uid']"),
        "load Job: the run id must be the Job's uid (one run per Job object)"
    );
    let results = env.get("LOAD_RESULTS_URL").and_then(|e| at(e, &["valueFrom", "secretKeyRef"]));
    let secret = results.and_then(|r| s(r, &["name"])).unwrap_or("");
    assert!(
        !secret.is_empty(),
        "load Job: LOAD_RESULTS_URL must come from a Secret, found {:?}",
        env.get("LOAD_RESULTS_URL")
    );
    for section in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(at(c, &["resources", section, res]).is_some(), "load Job: expected resources.{section}.{res}");
        }
    }
    assert_eq!(b(c, &["securityContext", "readOnlyRootFilesystem"]), Some(true), "load Job: read-only root");
    assert_eq!(b(c, &["securityContext", "allowPrivilegeEscalation"]), Some(false), "load Job: no escalation");
    let mounts: Vec<&str> = seq(c, &["volumeMounts"]).iter().filter_map(|m| s(m, &["mountPath"])).collect();
    let report_dir = after("--report-dir").unwrap_or("reports/load");
    assert!(
        mounts.iter().any(|m| report_dir.starts_with(m)),
        "load Job: --report-dir {report_dir} must be on a writable volume (mounts {mounts:?})"
    );

    // The results location: a Service and a StatefulSet of PostgreSQL that only the workers reach.
    let url = of_kind(&objs, "Secret")
        .into_iter()
        .find(|o| o.name() == secret)
        .and_then(|o| s(&o.v, &["stringData", results.and_then(|r| s(r, &["key"])).unwrap_or("")]))
        .unwrap_or_else(|| panic!("secret {secret:?} does not define the LOAD_RESULTS_URL key"));
    let svc_name = url.split('@').nth(1).and_then(|h| h.split([':', '/']).next()).unwrap_or("");
    let svc = find(&objs, "Service", svc_name);
    let port = seq(&svc.v, &["spec", "ports"]).iter().find_map(|p| i(p, &["port"]));
    assert_eq!(port, Some(5432), "{}: expected port 5432", svc.id());
    let sts = find(&objs, "StatefulSet", svc_name);
    let db = &seq(pod_spec(sts).expect("results pod"), &["containers"])[0];
    assert!(s(db, &["image"]).is_some_and(|i| i.starts_with("postgres:")), "{}: expected a postgres image", sts.id());
    assert!(
        !seq(&sts.v, &["spec", "volumeClaimTemplates"]).is_empty(),
        "{}: results must survive a pod restart (volumeClaimTemplates)",
        sts.id()
    );
    let pols = policies(&objs);
    let mut wrong = check_flow(&pols, "load", &app("load"), svc_name, 5432, "TCP", true);
    for other in ["rest-api", "algorithm-a", "data-writer", "harness", "rabbitmq"] {
        wrong.extend(check_flow(&pols, other, &app(other), svc_name, 5432, "TCP", false));
    }
    // The workers still do not reach the pipeline's own database or broker.
    wrong.extend(check_flow(&pols, "load", &app("load"), "postgres", 5432, "TCP", false));
    wrong.extend(check_flow(&pols, "load", &app("load"), "rabbitmq", 5672, "TCP", false));
    assert!(wrong.is_empty(), "results database access:\n{}", wrong.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// NetworkPolicy evaluation

/// A pod as NetworkPolicies see it: its namespace (with labels) and its own labels.
#[derive(Clone, Debug)]
struct Pod {
    ns: String,
    ns_labels: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

fn pod(ns: &str, pairs: &[(&str, &str)]) -> Pod {
    Pod {
        ns: ns.into(),
        ns_labels: [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
        labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}
fn app(name: &str) -> Pod {
    pod(NAMESPACE, &[(NAME_LABEL, name)])
}

/// `matchLabels` and `matchExpressions` of a label selector; `{}` selects everything.
fn selector_matches(sel: &Value, l: &BTreeMap<String, String>) -> bool {
    let wanted = labels(sel.get("matchLabels"));
    let labels_ok = wanted.iter().all(|(k, v)| l.get(k) == Some(v));
    let exprs_ok = seq(sel, &["matchExpressions"]).iter().all(|e| {
        let key = s(e, &["key"]).unwrap_or("");
        let values: Vec<String> = seq(e, &["values"]).iter().filter_map(scalar).collect();
        match s(e, &["operator"]) {
            Some("In") => l.get(key).is_some_and(|v| values.contains(v)),
            Some("NotIn") => l.get(key).is_none_or(|v| !values.contains(v)),
            Some("Exists") => l.contains_key(key),
            Some("DoesNotExist") => !l.contains_key(key),
            other => panic!("unsupported matchExpressions operator {other:?}"),
        }
    });
    labels_ok && exprs_ok
}

struct Policy<'a> {
    name: String,
    ns: String,
    spec: &'a Value,
}

impl Policy<'_> {
    fn selects(&self, p: &Pod) -> bool {
        let empty = Value::Mapping(Mapping::new());
        p.ns == self.ns && selector_matches(self.spec.get("podSelector").unwrap_or(&empty), &p.labels)
    }
    /// `policyTypes`, defaulted as the API server does.
    fn types(&self) -> Vec<String> {
        let listed: Vec<String> = seq(self.spec, &["policyTypes"]).iter().filter_map(scalar).collect();
        if !listed.is_empty() {
            return listed;
        }
        let mut t = vec!["Ingress".to_string()];
        if self.spec.get("egress").is_some() {
            t.push("Egress".into());
        }
        t
    }
    fn peer_matches(&self, peer: &Value, p: &Pod) -> bool {
        if peer.get("ipBlock").is_some() {
            return true; // An IP block may cover any pod: count it as allowing (conservative).
        }
        let ns_ok = match peer.get("namespaceSelector") {
            None => p.ns == self.ns,
            Some(sel) => selector_matches(sel, &p.ns_labels),
        };
        let pod_ok = peer.get("podSelector").is_none_or(|sel| selector_matches(sel, &p.labels));
        ns_ok && pod_ok
    }
    /// Does one of the rules of `direction` ("ingress" with peers in "from", or "egress" with "to")
    /// admit `peer` on `port`/`proto`?
    fn rules_allow(&self, direction: &str, peers_key: &str, peer: &Pod, port: i64, proto: &str) -> bool {
        seq(self.spec, &[direction]).iter().any(|rule| {
            let peers = seq(rule, &[peers_key]);
            let peer_ok = peers.is_empty() || peers.iter().any(|pe| self.peer_matches(pe, peer));
            let ports = seq(rule, &["ports"]);
            let port_ok = ports.is_empty()
                || ports.iter().any(|pp| {
                    let proto_ok = s(pp, &["protocol"]).unwrap_or("TCP") == proto;
                    let port_ok = match pp.get("port") {
                        None => true,
                        Some(v) => {
                            let n = v.as_i64().unwrap_or_else(|| {
                                panic!("policy {}: use numeric ports in NetworkPolicies, found {v:?}", self.name)
                            });
                            let end = i(pp, &["endPort"]).unwrap_or(n);
                            (n..=end).contains(&port)
                        }
                    };
                    proto_ok && port_ok
                });
            peer_ok && port_ok
        })
    }
}

fn policies(objs: &[Obj]) -> Vec<Policy<'_>> {
    of_kind(objs, "NetworkPolicy")
        .into_iter()
        .map(|o| Policy {
            name: o.name().to_string(),
            ns: s(&o.v, &["metadata", "namespace"]).unwrap_or("default").to_string(),
            spec: at(&o.v, &["spec"]).expect("NetworkPolicy spec"),
        })
        .collect()
}

/// Does one side admit the connection: the policies of `subject` of type `ty` ("Egress" for the
/// source, "Ingress" for the destination)? A pod that no policy of that type selects is not
/// isolated in that direction.
fn side_allows(pols: &[Policy], subject: &Pod, ty: &str, peer: &Pod, port: i64, proto: &str) -> bool {
    let (direction, peers_key) = if ty == "Egress" { ("egress", "to") } else { ("ingress", "from") };
    let selecting: Vec<&Policy> =
        pols.iter().filter(|p| p.selects(subject) && p.types().iter().any(|t| t == ty)).collect();
    selecting.is_empty() || selecting.iter().any(|p| p.rules_allow(direction, peers_key, peer, port, proto))
}

/// The source's egress side. Only our namespace's policies are known: pods elsewhere (the ingress
/// controller, kube-dns) are treated as unrestricted by their own namespace.
fn egress_ok(pols: &[Policy], src: &Pod, dst: &Pod, port: i64, proto: &str) -> bool {
    side_allows(pols, src, "Egress", dst, port, proto)
}
fn ingress_ok(pols: &[Policy], src: &Pod, dst: &Pod, port: i64, proto: &str) -> bool {
    side_allows(pols, dst, "Ingress", src, port, proto)
}
/// A connection src -> dst:port/proto needs both the source's egress and the destination's ingress.
fn allowed(pols: &[Policy], src: &Pod, dst: &Pod, port: i64, proto: &str) -> bool {
    egress_ok(pols, src, dst, port, proto) && ingress_ok(pols, src, dst, port, proto)
}

/// Checks the connection on both sides separately and combined, so neither side may lean on the
/// other: each must be exactly as tight as the matrix. Returns the mismatches.
fn check_flow(pols: &[Policy], label: &str, src: &Pod, dst: &str, port: i64, proto: &str, want: bool) -> Vec<String> {
    let d = app(dst);
    let word = |b: bool| if b { "allow" } else { "deny" };
    let mut wrong = Vec::new();
    let mut cmp = |what: &str, got: bool| {
        if got != want {
            wrong.push(format!(
                "{label} -> {dst}:{port}/{proto} ({what}): expected {}, actual {}",
                word(want),
                word(got)
            ));
        }
    };
    cmp("combined", allowed(pols, src, &d, port, proto));
    cmp("destination ingress rules", ingress_ok(pols, src, &d, port, proto));
    if src.ns == NAMESPACE {
        cmp("source egress rules", egress_ok(pols, src, &d, port, proto));
    }
    wrong
}

#[test]
fn network_policies_deny_by_default() {
    let objs = k8s_objects();
    let pols = policies(&objs);
    let deny = pols.iter().find(|p| {
        let all_pods = at(p.spec, &["podSelector"]).and_then(Value::as_mapping).is_none_or(|m| m.is_empty());
        let types = p.types();
        all_pods
            && types.iter().any(|t| t == "Ingress")
            && types.iter().any(|t| t == "Egress")
            && seq(p.spec, &["ingress"]).is_empty()
            && seq(p.spec, &["egress"]).is_empty()
    });
    assert!(
        deny.is_some(),
        "expected a default deny-all NetworkPolicy (podSelector {{}}, policyTypes [Ingress, Egress], no rules), found none among {:?}",
        pols.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    assert!(pols.iter().all(|p| p.ns == NAMESPACE), "every NetworkPolicy must be in namespace {NAMESPACE}");
}

#[test]
fn network_policies_implement_exactly_the_access_matrix() {
    let objs = k8s_objects();
    let pols = policies(&objs);
    let ingress_controller =
        pod("ingress-nginx", &[(NAME_LABEL, "ingress-nginx"), ("app.kubernetes.io/component", "controller")]);
    // (source, [rabbitmq:5672, postgres:5432, rest-api:8000]) as agreed in issue #5.
    let matrix: Vec<(&str, Pod, [bool; 3])> = vec![
        ("algorithm-a", app("algorithm-a"), [true, false, false]),
        ("algorithm-b", app("algorithm-b"), [true, false, false]),
        ("data-writer", app("data-writer"), [true, true, false]),
        ("rest-api", app("rest-api"), [true, true, false]),
        ("ingress-controller", ingress_controller, [false, false, true]),
        ("harness", app("harness"), [true, true, true]),
        ("load", app("load"), [false, false, true]),
        // Beyond the agreed matrix: nothing else gets in.
        ("rabbitmq", app("rabbitmq"), [false, false, false]),
        ("postgres", app("postgres"), [false, false, false]),
        ("sensor (no policy)", app("sensor"), [false, false, false]),
        ("harness in namespace default", pod("default", &[(NAME_LABEL, "harness")]), [false, false, false]),
        ("unlabelled pod", pod(NAMESPACE, &[]), [false, false, false]),
    ];
    let dests = [("rabbitmq", 5672), ("postgres", 5432), ("rest-api", 8000)];
    let mut wrong = Vec::new();
    let mut table = String::from("source -> rabbitmq:5672 postgres:5432 rest-api:8000 (actual, combined)\n");
    for (label, src, expected) in &matrix {
        table.push_str(&format!("{label:30}"));
        for ((dst, port), want) in dests.iter().zip(expected) {
            table.push_str(if allowed(&pols, src, &app(dst), *port, "TCP") { "  allow" } else { "  deny " });
            wrong.extend(check_flow(&pols, label, src, dst, *port, "TCP", *want));
        }
        table.push('\n');
        // Other ports of the same destinations (management UI, consumer health ports) stay closed.
        for (dst, port) in
            [("rabbitmq", 15672), ("rabbitmq", 4369), ("postgres", 5433), ("algorithm-a", 8081), ("data-writer", 8081)]
        {
            wrong.extend(check_flow(&pols, label, src, dst, port, "TCP", false));
        }
        // UDP to the service ports is never needed.
        for (dst, port) in dests {
            wrong.extend(check_flow(&pols, label, src, dst, port, "UDP", false));
        }
    }
    assert!(wrong.is_empty(), "NetworkPolicy matrix mismatches:\n{}\n\n{table}", wrong.join("\n"));
}

#[test]
fn every_pod_may_resolve_dns_and_nothing_else_leaves_the_namespace() {
    let objs = k8s_objects();
    let pols = policies(&objs);
    let kube_dns = pod("kube-system", &[("k8s-app", "kube-dns")]);
    let other_in_kube_system = pod("kube-system", &[("k8s-app", "metrics-server")]);
    let outside = pod("default", &[(NAME_LABEL, "anything")]);
    let mut wrong = Vec::new();
    for name in ["algorithm-a", "algorithm-b", "data-writer", "rest-api", "harness", "load", "rabbitmq", "postgres"] {
        let src = app(name);
        for proto in ["UDP", "TCP"] {
            if !allowed(&pols, &src, &kube_dns, 53, proto) {
                wrong.push(format!("{name} -> kube-dns:53/{proto}: expected allow, actual deny"));
            }
            for (dst_label, dst) in
                [("kube-system/metrics-server", &other_in_kube_system), ("default/anything", &outside)]
            {
                if allowed(&pols, &src, dst, 53, proto) {
                    wrong.push(format!("{name} -> {dst_label}:53/{proto}: expected deny, actual allow"));
                }
            }
        }
        for port in [80, 443] {
            if allowed(&pols, &src, &outside, port, "TCP") {
                wrong.push(format!("{name} -> default/anything:{port}: expected deny, actual allow"));
            }
        }
    }
    assert!(wrong.is_empty(), "DNS/egress mismatches:\n{}", wrong.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// docker-compose.yml

fn compose_services(c: &Value) -> Vec<(String, &Value)> {
    at(c, &["services"])
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml: services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_string(), v))
        .collect()
}
/// One-shot services live behind a profile (harness, load); everything else runs continuously.
fn long_running(svc: &Value) -> bool {
    seq(svc, &["profiles"]).is_empty() && !one_shot(svc)
}
/// A service that runs to completion (`restart: "no"`), e.g. `migrate`.
fn one_shot(svc: &Value) -> bool {
    s(svc, &["restart"]) == Some("no")
}
fn compose_env(svc: &Value) -> BTreeMap<String, String> {
    labels(at(svc, &["environment"]))
}
fn command(svc: &Value) -> Vec<String> {
    seq(svc, &["command"]).iter().filter_map(scalar).collect()
}

#[test]
fn compose_runs_every_component_with_the_agreed_topology() {
    let c = compose();
    let svcs: BTreeMap<String, &Value> = compose_services(&c).into_iter().collect();
    for name in
        ["rabbitmq", "postgres", "algorithm-a", "algorithm-b", "data-writer", "rest-api", "sensor", "harness", "load"]
    {
        assert!(svcs.contains_key(name), "docker-compose.yml: expected service {name}, found {:?}", svcs.keys());
    }
    assert_eq!(s(svcs["rabbitmq"], &["image"]), Some("rabbitmq:3.13-management"), "rabbitmq image");
    assert_eq!(s(svcs["postgres"], &["image"]), Some("postgres:15"), "postgres image");
    assert_eq!(
        compose_env(svcs["postgres"]).get("POSTGRES_DB").map(String::as_str),
        Some("audio_pipeline"),
        "POSTGRES_DB"
    );
    for (name, replicas) in [("algorithm-a", 2), ("algorithm-b", 2)] {
        let r = i(svcs[name], &["deploy", "replicas"]);
        assert_eq!(r, Some(replicas), "{name}: expected deploy.replicas {replicas}, found {r:?}");
    }
    let harness = svcs["harness"];
    assert_eq!(
        seq(harness, &["profiles"]).iter().filter_map(Value::as_str).collect::<Vec<_>>(),
        ["harness"],
        "harness profiles"
    );
    assert_eq!(compose_env(harness).get("QA_PROFILE").map(String::as_str), Some("external"), "harness QA_PROFILE");
    assert_eq!(
        seq(svcs["load"], &["profiles"]).iter().filter_map(Value::as_str).collect::<Vec<_>>(),
        ["load"],
        "load profiles"
    );
    let load_cmd = command(svcs["load"]);
    assert_eq!(load_cmd.first().map(String::as_str), Some("load"), "load command {load_cmd:?}");
    assert!(
        load_cmd.windows(2).any(|w| w[0] == "--host" && w[1] == "http://rest-api:8000"),
        "load command {load_cmd:?}"
    );

    let mut problems = Vec::new();
    for (name, svc) in &svcs {
        // Published ports only on loopback.
        for p in seq(svc, &["ports"]) {
            let spec = scalar(p).unwrap_or_else(|| format!("{p:?}"));
            if !spec.starts_with("127.0.0.1:") {
                problems.push(format!("{name}: expected ports published on 127.0.0.1 only, found {spec:?}"));
            }
        }
        for var in compose_env(svc).keys() {
            if var.starts_with("APQ_") && !KNOWN_APQ_VARS.contains(&var.as_str()) {
                problems.push(format!("{name}: unknown setting {var}"));
            }
            if FAULT_VARS.contains(&var.as_str()) {
                problems.push(format!("{name}: fault-injection switch {var} must not be set"));
            }
        }
        if s(svc, &["image"]).is_some_and(|i| i.contains("/pipeline:")) {
            let cmd = command(svc);
            if cmd.len() != 1 || cmd[0] != *name || !SUBCOMMANDS.contains(&cmd[0].as_str()) {
                problems.push(format!("{name}: expected command [{name:?}] (a pipeline subcommand), found {cmd:?}"));
            }
        }
    }
    let api_ports: Vec<String> = seq(svcs["rest-api"], &["ports"]).iter().filter_map(scalar).collect();
    if !api_ports.iter().any(|p| p.ends_with(":8000")) {
        problems.push(format!("rest-api: expected container port 8000 published on 127.0.0.1, found {api_ports:?}"));
    }
    assert!(problems.is_empty(), "compose problems:\n{}", problems.join("\n"));
}

#[test]
fn compose_health_checks_every_long_running_service_on_its_real_endpoint() {
    let c = compose();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, svc) in compose_services(&c) {
        if !long_running(svc) {
            continue;
        }
        checked += 1;
        let test: Vec<String> = match at(svc, &["healthcheck", "test"]) {
            Some(Value::Sequence(v)) => v.iter().filter_map(scalar).collect(),
            Some(Value::String(s)) => vec!["CMD-SHELL".into(), s.clone()],
            _ => Vec::new(),
        };
        if test.is_empty() || test[0] == "NONE" || b(svc, &["healthcheck", "disable"]) == Some(true) {
            problems.push(format!("{name}: expected a healthcheck, found {:?}", at(svc, &["healthcheck"])));
            continue;
        }
        let joined = test.join(" ");
        let env = compose_env(svc);
        let endpoint = env
            .get("APQ_HEALTH_BIND")
            .or_else(|| env.get("APQ_API_BIND"))
            .and_then(|bind| bind.rsplit(':').next())
            .map(|port| format!("/dev/tcp/127.0.0.1/{port}"));
        if let Some(ep) = endpoint
            && !(joined.contains(&ep) && joined.contains("GET /readyz"))
        {
            problems.push(format!("{name}: expected the healthcheck to GET /readyz via {ep}, found {joined:?}"));
        }
        if joined.contains("curl") || joined.contains("wget") {
            problems.push(format!("{name}: the runtime image has no curl/wget, found {joined:?}"));
        }
    }
    assert!(checked >= 7, "expected at least 7 long-running services, found {checked}");
    assert!(problems.is_empty(), "healthcheck problems:\n{}", problems.join("\n"));
}

#[test]
fn compose_dependencies_wait_until_healthy() {
    let c = compose();
    let svcs: BTreeMap<String, &Value> = compose_services(&c).into_iter().collect();
    let mut problems = Vec::new();
    for (name, svc) in &svcs {
        let deps = at(svc, &["depends_on"]);
        if let Some(Value::Sequence(list)) = deps {
            problems.push(format!(
                "{name}: expected depends_on entries with condition service_healthy, found the short form {list:?}"
            ));
            continue;
        }
        let deps: Vec<(String, &Value)> = deps
            .and_then(Value::as_mapping)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v))).collect())
            .unwrap_or_default();
        for (dep, spec) in &deps {
            let cond = s(spec, &["condition"]);
            // A one-shot dependency is waited for until it has succeeded; a server until healthy.
            let expected = if svcs.get(dep).is_some_and(|d| one_shot(d)) {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            if cond != Some(expected) {
                problems.push(format!("{name} -> {dep}: expected condition {expected}, found {cond:?}"));
            }
            match svcs.get(dep) {
                None => problems.push(format!("{name} -> {dep}: no such service")),
                Some(d) if !one_shot(d) && at(d, &["healthcheck", "test"]).is_none() => {
                    problems.push(format!("{name} -> {dep}: the dependency has no healthcheck"))
                }
                _ => {}
            }
        }
        let env = compose_env(svc);
        let names: BTreeSet<&str> = deps.iter().map(|(d, _)| d.as_str()).collect();
        let needs = [
            ("rabbitmq", env.contains_key("APQ_AMQP_URL") || env.contains_key("QA_AMQP_URL")),
            ("postgres", env.contains_key("APQ_DATABASE_URL") || env.contains_key("QA_DATABASE_URL")),
        ];
        for (infra, needed) in needs {
            if needed && !names.contains(infra) {
                problems.push(format!("{name}: uses {infra} but does not depend on it (depends_on {names:?})"));
            }
        }
        if env.contains_key("QA_API_URL") && !names.contains("rest-api") {
            problems.push(format!("{name}: uses the API but does not depend on rest-api"));
        }
    }
    assert!(problems.is_empty(), "depends_on problems:\n{}", problems.join("\n"));
}

/// Least privilege: the writer and the API connect as the roles `migrate` creates (INSERT-only,
/// SELECT-only), never as the database owner; `migrate` itself runs as the owner first.
#[test]
fn compose_writer_and_api_use_least_privilege_roles() {
    let c = compose();
    let svcs: BTreeMap<String, &Value> = compose_services(&c).into_iter().collect();
    let user = |svc: &str| {
        let url = compose_env(svcs[svc]).get("APQ_DATABASE_URL").cloned().unwrap_or_default();
        url.split("://").nth(1).and_then(|r| r.split('@').next()).map(|u| u.split(':').next().unwrap_or("").to_string())
    };
    let migrate = compose_env(svcs["migrate"]);
    let (writer, reader) = (migrate.get("APQ_DB_WRITER_ROLE").cloned(), migrate.get("APQ_DB_READER_ROLE").cloned());
    assert!(writer.is_some() && reader.is_some(), "migrate must create both roles: {migrate:?}");
    assert_eq!(user("data-writer"), writer, "data-writer connects as the writer role");
    assert_eq!(user("rest-api"), reader, "rest-api connects as the reader role");
    assert_ne!(user("migrate"), writer, "migrate runs as the owner");
    for svc in ["data-writer", "rest-api"] {
        let cond = s(svcs[svc], &["depends_on", "migrate", "condition"]);
        assert_eq!(cond, Some("service_completed_successfully"), "{svc} waits for migrate");
    }
}

/// Least privilege in Kubernetes: the writer and the API read their URLs from the least-privilege
/// keys, and the data writer's `migrate` init container creates those roles with passwords from
/// the Secret.
#[test]
fn k8s_writer_and_api_use_least_privilege_roles() {
    let objs = k8s_objects();
    let key_of = |c: &Value, var: &str| {
        seq(c, &["env"])
            .iter()
            .find(|e| s(e, &["name"]) == Some(var))
            .and_then(|e| s(e, &["valueFrom", "secretKeyRef", "key"]))
            .map(String::from)
    };
    let writer = pod_spec(find(&objs, "Deployment", "data-writer")).expect("data-writer pod");
    let main: Vec<&Value> = seq(writer, &["containers"]).iter().collect();
    assert_eq!(key_of(main[0], "APQ_DATABASE_URL").as_deref(), Some("writer-database-url"));
    let init: Vec<&Value> = seq(writer, &["initContainers"]).iter().collect();
    assert_eq!(init.len(), 1, "one migrate init container");
    assert_eq!(key_of(init[0], "APQ_DATABASE_URL").as_deref(), Some("database-url"), "migrate runs as the owner");
    assert_eq!(key_of(init[0], "APQ_DB_WRITER_PASSWORD").as_deref(), Some("writer-password"));
    assert_eq!(key_of(init[0], "APQ_DB_READER_PASSWORD").as_deref(), Some("reader-password"));
    let api = pod_spec(find(&objs, "Deployment", "rest-api")).expect("rest-api pod");
    assert_eq!(key_of(&seq(api, &["containers"])[0], "APQ_DATABASE_URL").as_deref(), Some("reader-database-url"));
}
