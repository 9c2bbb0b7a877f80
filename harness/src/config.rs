//! What the user sets: a TOML profile (`harness/profiles/<name>.toml` of the checkout found at run
//! time, or `QA_CONFIG=<file>`) overridden by `QA_*` environment variables. Live state (connections, processes) lives in
//! [`crate::env`], never here.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The harness starts the reference services itself, isolated per run.
    Local,
    /// The harness connects to a deployment it does not control.
    External,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub profile: Profile,
    /// Broker of the system under test.
    pub amqp_url: String,
    /// External: the deployment's queue/exchange prefix ("" for none). Local: ignored (per run).
    #[serde(default)]
    pub namespace: String,
    /// External: the deployment's database. Local: an admin connection to create the run's DB in.
    pub database_url: String,
    /// External: the API base URL (required). Local: ignored (the harness starts the API).
    #[serde(default)]
    pub api_url: Option<String>,
    /// External: a valid bearer token. Local: ignored (a per-run token is generated).
    #[serde(default)]
    pub api_token: Option<String>,
    /// Default deadline of every `eventually` wait.
    pub deadline_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Where JUnit/JSON reports, failure bundles and service logs go: each run writes below
    /// `<report_dir>/runs/<run id>/` (relative paths are taken from the checkout's root).
    pub report_dir: PathBuf,
    /// Local profile: the adapter command that starts one component, as a program followed by
    /// whitespace-separated arguments; the component's name is appended
    /// (`fixtures/contracts/adapter.md`). None: the reference `sut-pipeline` built beside the
    /// runner.
    #[serde(default)]
    pub sut_command: Option<String>,
    /// External profile: scenarios tagged `@writes-db` (they INSERT seed rows and delete their
    /// own rows afterwards) run only when this is set; otherwise the harness's database session
    /// is read-only.
    #[serde(default)]
    pub external_writes_db: bool,
}

impl Config {
    /// Loads `QA_CONFIG`, else the profile named by `QA_PROFILE` (default `local`), then applies
    /// the `QA_*` overrides.
    pub fn load() -> anyhow::Result<Self> {
        let root = crate::paths::project_root()?;
        let mut cfg = Self::load_with(|k| std::env::var(k).ok(), &root.join("harness/profiles"))?;
        if cfg.report_dir.is_relative() {
            cfg.report_dir = root.join(&cfg.report_dir);
        }
        Ok(cfg)
    }

    /// [`Config::load`] with the variables from `get` and the profiles in `profiles`.
    pub fn load_with(get: impl Fn(&str) -> Option<String>, profiles: &std::path::Path) -> anyhow::Result<Self> {
        let path = match get("QA_CONFIG") {
            Some(p) => PathBuf::from(p),
            None => {
                let profile = get("QA_PROFILE").unwrap_or_else(|| "local".into());
                if !matches!(profile.as_str(), "local" | "external") {
                    bail!("QA_PROFILE={profile:?} is not a profile; use local or external");
                }
                profiles.join(format!("{profile}.toml"))
            }
        };
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("reading harness profile {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing harness profile {}", path.display()))?;
        cfg.apply_env(get)?;
        Ok(cfg)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let num =
            |k: &str, v: String| v.trim().parse::<u64>().with_context(|| format!("{k}={v:?} is not a whole number"));
        if let Some(v) = get("QA_AMQP_URL") {
            self.amqp_url = v;
        }
        if let Some(v) = get("QA_NAMESPACE") {
            self.namespace = v;
        }
        if let Some(v) = get("QA_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = get("QA_API_URL") {
            self.api_url = Some(v.trim_end_matches('/').to_string());
        }
        if let Some(v) = get("QA_API_TOKEN") {
            self.api_token = Some(v);
        }
        if let Some(v) = get("QA_DEADLINE_MS") {
            self.deadline_ms = num("QA_DEADLINE_MS", v)?;
        }
        if let Some(v) = get("QA_REPORT_DIR") {
            self.report_dir = v.into();
        }
        // QA_SERVICES_BIN: the older name, a binary without arguments.
        if let Some(v) = get("QA_SUT_COMMAND").or_else(|| get("QA_SERVICES_BIN")) {
            self.sut_command = Some(v);
        }
        if let Some(v) = get("QA_EXTERNAL_WRITES_DB") {
            self.external_writes_db = is_true(&v);
        }
        if self.profile == Profile::External && (self.api_url.is_none() || self.api_token.is_none()) {
            bail!("the external profile needs QA_API_URL and QA_API_TOKEN (the deployment's API and a valid token)");
        }
        if self.deadline_ms == 0 {
            bail!("deadline_ms must be positive");
        }
        Ok(())
    }

    /// The default backoff for `eventually` waits.
    pub fn backoff(&self) -> crate::eventually::Backoff {
        crate::eventually::Backoff {
            deadline: Duration::from_millis(self.deadline_ms),
            initial: Duration::from_millis(self.backoff_initial_ms),
            max: Duration::from_millis(self.backoff_max_ms),
            ..Default::default()
        }
    }
}

/// Whether a switch variable is on (`1`, `true`, `yes`; anything else, or unset, is off).
pub fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| is_true(&v))
}

fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn load(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        Config::load_with(get, &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles"))
    }

    #[test]
    fn the_adapter_command_and_db_writes_are_set_by_variables() {
        let cfg = load(env(&[("QA_SUT_COMMAND", "/opt/adapter --verbose")])).unwrap();
        assert_eq!(cfg.sut_command.as_deref(), Some("/opt/adapter --verbose"));
        assert!(!cfg.external_writes_db, "database writes are opt-in");
        assert!(load(env(&[("QA_EXTERNAL_WRITES_DB", "1")])).unwrap().external_writes_db);
    }

    #[test]
    fn local_is_the_default_profile() {
        let cfg = load(env(&[])).unwrap();
        assert_eq!(cfg.profile, Profile::Local);
    }

    #[test]
    fn external_needs_an_api_address() {
        let err = load(env(&[("QA_PROFILE", "external")])).unwrap_err();
        assert!(format!("{err:#}").contains("QA_API_URL"), "{err:#}");
        let cfg = load(env(&[
            ("QA_PROFILE", "external"),
            ("QA_API_URL", "http://127.0.0.1:9/"),
            ("QA_API_TOKEN", "t"),
            ("QA_DEADLINE_MS", "1234"),
        ]))
        .unwrap();
        assert_eq!((cfg.api_url.as_deref(), cfg.deadline_ms), (Some("http://127.0.0.1:9"), 1234));
    }

    #[test]
    fn unknown_profile_is_named() {
        let err = load(env(&[("QA_PROFILE", "staging")])).unwrap_err();
        assert!(err.to_string().contains("staging"));
    }
}
