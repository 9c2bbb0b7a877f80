//! Offline JSON-schema validation of the deployment artifacts, the schema half of
//! `scripts/validate-deploy.sh` without its Python venv and without network:
//!   k8s/*.yaml                 every document against the kubernetes-validate "local-strict" schema of its
//!                              kind (Kubernetes 1.30, the script's K8S_VERSION); a kind without a schema fails
//!   docker-compose.yml         compose-spec schema vendored by check-jsonschema
//!   .github/workflows/*.yml    GitHub workflow schema (SchemaStore) + check-jsonschema's "every job has
//!                              timeout-minutes" schema
//! The schemas are verbatim copies in `fixtures/schemas/` (origins, versions and licenses in its README).
//! The k8s kind schemas `$ref` `/api/_definitions.json`, resolved against their `$id`
//! (https://kubernetes.io/api/...); that URI is served from the local `_definitions.json` through a
//! pre-built registry. jsonschema is built without `resolve-http`/`resolve-file`, so any other
//! external `$ref` is a build error here, never a download.
//!
//! YAML gotchas (serde_yaml 0.9 vs the tools behind the script):
//! * `on:` in workflows: serde_yaml follows YAML 1.2, so `on` stays the string key "on" (PyYAML, YAML 1.1,
//!   would make it `true`); asserted below. The same 1.2 rule makes plain `yes`/`no`/`on`/`off` strings,
//!   whereas Kubernetes' own YAML 1.1 parser reads them as booleans: quote such values in manifests.
//! * Merge keys: serde_yaml 0.9 keeps `<<: *anchor` as a literal "<<" key unless `apply_merge` is called;
//!   docker compose (and check-jsonschema) merge them, so every document is merged before validation.
//!   compose `x-*` extension fields are allowed by the compose-spec `patternProperties: ^x-`.
//! * int-or-string fields (ports, `targetPort`, `maxUnavailable`, ...) are `oneOf [string, integer]` in
//!   the k8s schemas: `8080` and `"http"`/`"25%"` both pass, but `null` matches both branches and fails.
//! * Empty documents (a trailing `---`) are skipped, as kubernetes-validate does.

use jsonschema::{Registry, Validator};
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Must match `K8S_VERSION` in scripts/validate-deploy.sh (checked by `fixture_version_matches_script`).
const K8S_VERSION: &str = "1.30.0";
const SCHEMAS: &str = "fixtures/schemas";
/// Where the kind schemas' `$ref: /api/_definitions.json` points once resolved against their `$id`.
const K8S_DEFINITIONS_URI: &str = "https://kubernetes.io/api/_definitions.json";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s_schema_dir() -> String {
    format!("{SCHEMAS}/k8s/v{K8S_VERSION}-local-strict")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn read_json(rel: &str) -> Json {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("parse {rel}: {e}"))
}

/// Files in `dir` (relative to the repo root) whose names end in one of `exts`, sorted, as relative paths.
fn files(dir: &str, exts: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .map(|entry| entry.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|name| exts.iter().any(|ext| name.ends_with(ext)))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    out.sort();
    out
}

/// Every document of a YAML file, merge keys applied, converted to JSON; `None` for empty documents.
fn yaml_documents(rel: &str) -> Vec<Option<Json>> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(index, doc)| {
            let mut value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel} document #{index}: YAML parse error: {e}"));
            value.apply_merge().unwrap_or_else(|e| panic!("{rel} document #{index}: merge keys: {e}"));
            if value.is_null() {
                return None;
            }
            let json = serde_json::to_value(&value)
                .unwrap_or_else(|e| panic!("{rel} document #{index}: not representable as JSON: {e}"));
            Some(json)
        })
        .collect()
}

/// `instance path: message` for every violation; empty when valid.
fn violations(validator: &Validator, instance: &Json) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "(root)" } else { path.as_str() })
        })
        .collect()
}

fn build(schema_rel: &str, registry: Option<&Registry>, formats: bool) -> Validator {
    let schema = read_json(schema_rel);
    let mut options = jsonschema::options().should_validate_formats(formats);
    if let Some(registry) = registry {
        options = options.with_registry(registry);
    }
    options.build(&schema).unwrap_or_else(|e| panic!("compile schema {schema_rel}: {e}"))
}

/// kubernetes-validate's file naming: `<kind>-<group without domain>-<version>.json`, `<kind>-<version>.json`
/// for the core group (`networking.k8s.io/v1` -> `networking-v1`, `v1` -> `v1`).
fn k8s_schema_file(api_version: &str, kind: &str) -> String {
    let kind = kind.to_lowercase();
    match api_version.split_once('/') {
        Some((group, version)) => {
            let group = group.split('.').next().unwrap_or(group);
            format!("{kind}-{group}-{version}.json")
        }
        None => format!("{kind}-{api_version}.json"),
    }
}

struct K8sValidators {
    registry: Registry<'static>,
    by_file: BTreeMap<String, Option<Validator>>,
}

impl K8sValidators {
    fn new() -> Self {
        let definitions = read_json(&format!("{}/_definitions.json", k8s_schema_dir()));
        let registry = Registry::new()
            .add(K8S_DEFINITIONS_URI, definitions)
            .expect("definitions URI")
            .prepare()
            .expect("prepare k8s definitions registry");
        Self { registry, by_file: BTreeMap::new() }
    }

    /// The validator for a kind, `None` when `fixtures/schemas` has no schema for it.
    fn get(&mut self, api_version: &str, kind: &str) -> Option<&Validator> {
        let file = k8s_schema_file(api_version, kind);
        let registry = &self.registry;
        self.by_file
            .entry(file)
            .or_insert_with_key(|file| {
                let rel = format!("{}/{file}", k8s_schema_dir());
                // Kubernetes-validate uses Draft 2020-12 with no format checker: formats stay annotations.
                repo_root().join(&rel).is_file().then(|| build(&rel, Some(registry), false))
            })
            .as_ref()
    }
}

fn str_at<'a>(doc: &'a Json, pointer: &str) -> Option<&'a str> {
    doc.pointer(pointer).and_then(Json::as_str)
}

/// All violations of the k8s documents of `file`, one line each:
/// `file doc #i Kind/name: instance path: error`.
fn k8s_failures(validators: &mut K8sValidators, file: &str, docs: &[Option<Json>]) -> Vec<String> {
    let mut failures = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let Some(doc) = doc else { continue };
        let kind = str_at(doc, "/kind");
        let api_version = str_at(doc, "/apiVersion");
        let name = str_at(doc, "/metadata/name").unwrap_or("<no metadata.name>");
        let (Some(kind), Some(api_version)) = (kind, api_version) else {
            failures.push(format!("{file} doc #{index} ({name}): missing apiVersion or kind"));
            continue;
        };
        let label = format!("{file} doc #{index} {kind}/{name} ({api_version})");
        match validators.get(api_version, kind) {
            None => failures.push(format!(
                "{label}: no schema for kind {kind} ({api_version}): expected {}/{} \
                 (copy it from kubernetes-validate's v{K8S_VERSION}-local-strict and note it in {SCHEMAS}/README.md)",
                k8s_schema_dir(),
                k8s_schema_file(api_version, kind)
            )),
            Some(validator) => failures.extend(violations(validator, doc).into_iter().map(|v| format!("{label}: {v}"))),
        }
    }
    failures
}

fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(failures.is_empty(), "{what}: {} schema violation(s):\n  {}", failures.len(), failures.join("\n  "));
}

#[test]
fn k8s_manifests_match_their_kind_schemas() {
    let manifests = files("k8s", &[".yaml", ".yml"]);
    assert!(!manifests.is_empty(), "no manifests in k8s/");
    let mut validators = K8sValidators::new();
    let mut failures = Vec::new();
    let mut validated = 0;
    for file in &manifests {
        let docs = yaml_documents(file);
        validated += docs.iter().flatten().count();
        failures.extend(k8s_failures(&mut validators, file, &docs));
    }
    assert_no_failures("k8s", &failures);
    assert!(validated > 0, "k8s/ holds no documents");
}

#[test]
fn docker_compose_matches_compose_spec() {
    let file = "docker-compose.yml";
    let docs = yaml_documents(file);
    assert_eq!(docs.len(), 1, "{file}: expected a single YAML document");
    let compose = docs[0].as_ref().unwrap_or_else(|| panic!("{file} is empty"));
    // Merge keys must be gone (apply_merge): a literal "<<" service key would be an unknown property.
    let services = compose["services"].as_object().unwrap_or_else(|| panic!("{file}: no services"));
    for (name, service) in services {
        assert!(service.get("<<").is_none(), "{file}: services.{name} still has an unmerged `<<` key");
    }
    // check-jsonschema validates formats by default; do the same (compose-spec declares none today).
    let validator = build(&format!("{SCHEMAS}/compose-spec.json"), None, true);
    let failures: Vec<String> = violations(&validator, compose).into_iter().map(|v| format!("{file}: {v}")).collect();
    assert_no_failures("docker-compose", &failures);
}

#[test]
fn ci_workflows_match_github_workflow_schema_and_set_timeouts() {
    let workflows = files(".github/workflows", &[".yml", ".yaml"]);
    assert!(workflows.iter().any(|f| f.ends_with("/ci.yml")), ".github/workflows/ci.yml missing: {workflows:?}");
    let schemas = [
        (format!("{SCHEMAS}/github-workflows.json"), "github-workflow schema"),
        (format!("{SCHEMAS}/github-workflows-require-timeout.json"), "every job has timeout-minutes"),
    ];
    let validators: Vec<(Validator, &str)> =
        schemas.iter().map(|(rel, label)| (build(rel, None, true), *label)).collect();
    let mut failures = Vec::new();
    for file in &workflows {
        let docs = yaml_documents(file);
        assert_eq!(docs.len(), 1, "{file}: expected a single YAML document");
        let workflow = docs[0].as_ref().unwrap_or_else(|| panic!("{file} is empty"));
        // YAML 1.2: `on:` is the string key "on", not the boolean `true` (which JSON would render as "true").
        assert!(workflow.get("on").is_some(), "{file}: no `on` key after parsing (YAML 1.1 boolean?)");
        for (validator, label) in &validators {
            failures.extend(violations(validator, workflow).into_iter().map(|v| format!("{file} ({label}): {v}")));
        }
    }
    assert_no_failures("workflows", &failures);
}

/// Guards against a vacuous pass (e.g. a `$ref` that silently resolves to `true`): broken copies of real
/// documents must be rejected at the broken field.
#[test]
fn schemas_reject_broken_documents() {
    let deployment = files("k8s", &[".yaml", ".yml"])
        .iter()
        .flat_map(|f| yaml_documents(f))
        .flatten()
        .find(|doc| str_at(doc, "/kind") == Some("Deployment"))
        .expect("a Deployment in k8s/");
    let mut broken = deployment.clone();
    broken["spec"]["replicas"] = Json::from("two");
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = Json::from("Always");
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = Json::from("8080");
    let mut validators = K8sValidators::new();
    let failures = k8s_failures(&mut validators, "k8s/<broken>", &[Some(broken)]).join("\n");
    for path in
        ["/spec/replicas", "/spec/template/spec/containers/0", "/spec/template/spec/containers/0/ports/0/containerPort"]
    {
        assert!(failures.contains(&format!(": {path}: ")), "expected a violation at {path}, got:\n{failures}");
    }
    let unknown_kind: Json = serde_json::json!({"apiVersion": "v1", "kind": "Frobnicator", "metadata": {"name": "x"}});
    let failures = k8s_failures(&mut validators, "k8s/<broken>", &[Some(unknown_kind)]).join("\n");
    assert!(failures.contains("no schema for kind Frobnicator"), "{failures}");

    let mut compose = yaml_documents("docker-compose.yml").remove(0).expect("compose document");
    let first = compose["services"].as_object().and_then(|s| s.keys().next().cloned()).expect("a service");
    compose["services"][&first]["restart_policy"] = Json::from("always");
    let validator = build(&format!("{SCHEMAS}/compose-spec.json"), None, true);
    assert!(!violations(&validator, &compose).is_empty(), "compose-spec accepted an unknown service key");

    let mut workflow = yaml_documents(".github/workflows/ci.yml").remove(0).expect("workflow document");
    let job = workflow["jobs"].as_object().and_then(|j| j.keys().next().cloned()).expect("a job");
    workflow["jobs"][&job].as_object_mut().expect("job mapping").remove("timeout-minutes");
    workflow["jobs"][&job]["runs-on"] = Json::from(42);
    for schema in ["github-workflows.json", "github-workflows-require-timeout.json"] {
        let validator = build(&format!("{SCHEMAS}/{schema}"), None, true);
        assert!(!violations(&validator, &workflow).is_empty(), "{schema} accepted a broken job {job}");
    }
}

/// The fixture directory is named after the Kubernetes version; keep it in step with the script.
#[test]
fn fixture_version_matches_script() {
    let script = read("scripts/validate-deploy.sh");
    let expected = format!("K8S_VERSION=\"${{K8S_VERSION:-{K8S_VERSION}}}\"");
    assert!(script.contains(&expected), "scripts/validate-deploy.sh no longer has `{expected}`: re-copy the schemas");
    assert!(repo_root().join(k8s_schema_dir()).is_dir(), "{} missing", k8s_schema_dir());
}
