//! Live state of a run (never configuration): the broker connection, the database, the pipelines
//! under test and their processes. In the local profile the run owns everything it starts: a
//! broker namespace `qa-<run id>`, a database `apq_qa_<run id>`, and the service processes; all
//! are removed at the end. In the external profile it only connects.

use crate::amqp::{self, Publisher, Tap, Topology};
use crate::api::ApiClient;
use crate::config::{Config, Profile};
use crate::sql::Db;
use crate::sut::{Component, Processes};
use anyhow::{Context, bail};
use contract::topology::Names;
use std::path::PathBuf;
use std::sync::Arc;

/// One pipeline under test: its names, taps, publisher, API client and (local) processes.
pub struct Pipeline {
    /// Broker names of this pipeline (its namespace).
    pub names: Names,
    /// Captures everything on its fanouts and DLQs.
    pub tap: Tap,
    /// Publishes chunks and raw messages to its work queue.
    pub publisher: Publisher,
    /// Its REST API, when one runs.
    pub api: Option<ApiClient>,
    /// Its processes (local profile only).
    pub procs: Option<Processes>,
    /// Env every process of this pipeline gets.
    pub service_env: Vec<(String, String)>,
    /// The connection the publisher uses (kept for clean-up).
    conn: Arc<lapin::Connection>,
}

impl Pipeline {
    pub fn procs(&self) -> anyhow::Result<&Processes> {
        self.procs.as_ref().context("this pipeline is not controlled by the harness (external profile)")
    }
    pub fn api(&self) -> anyhow::Result<&ApiClient> {
        self.api.as_ref().context("this pipeline has no REST API running")
    }

    /// Starts `n` more instances of a component, and points the API client at a new API.
    pub async fn start(
        &mut self,
        component: Component,
        n: usize,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Vec<String>> {
        let ids = self.procs()?.start(component, n, extra_env).await?;
        if component == Component::RestApi && self.api.is_none() {
            let port = self.procs()?.http_port(Component::RestApi).context("the REST API announced no port")?;
            let token = token_of(&self.service_env);
            self.api = Some(ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(token))?);
        }
        Ok(ids)
    }

    /// Stops its processes and deletes its broker topology.
    pub async fn teardown(&self) {
        if let Some(p) = &self.procs {
            p.stop_all().await;
            amqp::delete_namespace(&self.conn, &self.names).await;
        }
    }
}

fn token_of(env: &[(String, String)]) -> String {
    env.iter()
        .find(|(k, _)| k == "APQ_API_TOKENS")
        .and_then(|(_, v)| v.split(',').next())
        .unwrap_or_default()
        .to_string()
}

/// The whole run.
pub struct Env {
    pub config: Config,
    /// Short random id; prefixes namespaces, databases and sensor ids.
    pub run_id: String,
    /// The harness's own database connection (the SUT's database).
    pub db: Db,
    /// The SUT's database URL.
    pub database_url: String,
    /// The pipeline every scenario shares.
    pub shared: Pipeline,
    /// The per-run database we created (local profile), dropped at the end.
    created_db: Option<String>,
    /// The per-run least-privilege roles (local profile), dropped at the end.
    created_roles: Vec<String>,
    /// Settings only the DataWriter gets (its INSERT-only database role).
    writer_env: Vec<(String, String)>,
    /// The broker connection for publishers and clean-up.
    conn: Arc<lapin::Connection>,
    /// The private broker and database of chaos scenarios: started by the first one that needs
    /// them (`Err` remembers why they could not start, so later scenarios fail fast), stopped at
    /// the end of the run.
    chaos: tokio::sync::Mutex<Option<Result<Arc<crate::chaos::Rig>, String>>>,
}

impl Env {
    /// Connects (external) or creates and starts everything (local). `run_id` names the run's
    /// namespace, database and report folder ([`crate::paths::new_run_id`]).
    pub async fn start(config: Config, run_id: String) -> anyhow::Result<Env> {
        let conn = Arc::new(amqp::connect(&config.amqp_url, "qa-harness").await?);
        match config.profile {
            Profile::External => {
                let names = Names::new(&config.namespace);
                let db = Db::connect(&config.database_url).await.context("connecting to the SUT database")?;
                if !config.external_writes_db {
                    // The deployment's data is not ours: every statement of this session is
                    // refused by PostgreSQL itself if it would write.
                    db.make_read_only().await?;
                }
                let tap = Tap::start(&config.amqp_url, &names, Topology::Deployed).await?;
                let publisher = Publisher::new(&conn, names.clone(), Topology::Deployed).await?;
                let api = ApiClient::new(config.api_url.as_deref().expect("validated"), config.api_token.clone())?;
                let shared = Pipeline {
                    names,
                    tap,
                    publisher,
                    api: Some(api),
                    procs: None,
                    service_env: vec![],
                    conn: conn.clone(),
                };
                Ok(Env {
                    database_url: config.database_url.clone(),
                    config,
                    run_id,
                    db,
                    shared,
                    created_db: None,
                    created_roles: vec![],
                    writer_env: vec![],
                    conn,
                    chaos: tokio::sync::Mutex::new(None),
                })
            }
            Profile::Local => {
                let db_name = format!("apq_qa_{run_id}");
                let roles = [format!("apq_qa_{run_id}_writer"), format!("apq_qa_{run_id}_reader")];
                let namespace = format!("qa-{run_id}");
                let admin_url = config.database_url.clone();
                crate::sql::create_database(&admin_url, &db_name).await?;
                // From here on, a failed start removes everything it made: the database, the
                // roles, the namespace's queues and exchanges, and (dropped) the processes.
                match Self::start_local(config, run_id, conn.clone(), &db_name, &roles, &namespace).await {
                    Ok(env) => Ok(env),
                    Err(e) => {
                        if let Err(c) = crate::sql::drop_database(&admin_url, &db_name).await {
                            eprintln!("warning: could not drop run database {db_name}: {c:#}");
                        }
                        if let Err(c) = crate::sql::drop_roles(&admin_url, &roles).await {
                            eprintln!("warning: could not drop the run's roles {roles:?}: {c:#}");
                        }
                        amqp::delete_namespace(&conn, &Names::new(&namespace)).await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// The local profile's start after its database exists: `<adapter> migrate` (schema and
    /// least-privilege roles), the shared pipeline's taps, and one instance of each component.
    async fn start_local(
        config: Config,
        run_id: String,
        conn: Arc<lapin::Connection>,
        db_name: &str,
        roles: &[String; 2],
        namespace: &str,
    ) -> anyhow::Result<Env> {
        let database_url = with_database(&config.database_url, db_name)?;
        // Least privilege: the adapter's one-shot `migrate` applies the schema as the owner and
        // creates the writer's INSERT-only and the API's SELECT-only roles.
        let mut migrate_env = sut_env_overrides()?;
        migrate_env.extend([
            ("APQ_DATABASE_URL".to_string(), database_url.clone()),
            ("APQ_DB_WRITER_ROLE".to_string(), roles[0].clone()),
            ("APQ_DB_READER_ROLE".to_string(), roles[1].clone()),
        ]);
        let log = config.report_dir.join("sut-logs").join(format!("migrate-{run_id}.log"));
        crate::sut::run_once(&sut_command(&config)?, "migrate", &migrate_env, &log, std::time::Duration::from_secs(60))
            .await
            .context("setting up the run database (`<adapter> migrate`)")?;
        let writer_url = with_user(&database_url, &roles[0])?;
        let reader_url = with_user(&database_url, &roles[1])?;
        let db = Db::connect(&database_url).await?;
        let mut service_env = vec![
            ("APQ_AMQP_URL".to_string(), config.amqp_url.clone()),
            // Everyone reads; only the DataWriter writes (below).
            ("APQ_DATABASE_URL".to_string(), reader_url),
            ("APQ_API_TOKENS".to_string(), format!("qa-token-{run_id}")),
            ("APQ_API_BIND".to_string(), "127.0.0.1:0".to_string()),
            ("APQ_API_RATE_LIMIT_PER_SEC".to_string(), "5000".to_string()),
            ("APQ_API_RATE_LIMIT_BURST".to_string(), "10000".to_string()),
        ];
        for (k, v) in sut_env_overrides()? {
            service_env.retain(|(ek, _)| *ek != k);
            service_env.push((k, v));
        }
        let writer_env = vec![("APQ_DATABASE_URL".to_string(), writer_url)];
        let shared = new_local_pipeline(&config, &conn, namespace, service_env, writer_env.clone(), &run_id).await?;
        let mut env = Env {
            shared,
            database_url,
            config,
            run_id,
            db,
            created_db: Some(db_name.to_string()),
            created_roles: roles.to_vec(),
            writer_env,
            conn,
            chaos: tokio::sync::Mutex::new(None),
        };
        for c in [Component::DataWriter, Component::AlgorithmA, Component::AlgorithmB, Component::RestApi] {
            if let Err(e) = env.shared.start(c, 1, &[]).await {
                if let Some(p) = &env.shared.procs {
                    p.stop_all().await;
                }
                return Err(e.context(format!("starting {}", c.subcommand())));
            }
        }
        Ok(env)
    }

    pub fn is_local(&self) -> bool {
        self.config.profile == Profile::Local
    }

    /// Whether the harness may INSERT and DELETE rows: always in its own database (local),
    /// in a deployment's only when the user opted in (`QA_EXTERNAL_WRITES_DB`).
    pub fn may_write_db(&self) -> bool {
        self.is_local() || self.config.external_writes_db
    }

    /// A pipeline of the scenario's own (local profile): its own broker namespace, the run's
    /// database, and only the processes the scenario starts. Lets a scenario kill, scale or break
    /// components without disturbing concurrent scenarios.
    pub async fn private_pipeline(&self, slug: &str, extra_env: &[(String, String)]) -> anyhow::Result<Pipeline> {
        if !self.is_local() {
            bail!("private pipelines need the local profile (tag the scenario @needs-sut-control)");
        }
        let namespace = format!("qa-{}-{slug}", self.run_id);
        let mut env = self.shared.service_env.clone();
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        new_local_pipeline(&self.config, &self.conn, &namespace, env, self.writer_env.clone(), slug).await
    }

    /// The run's private broker and database for chaos scenarios (local profile only), started on
    /// first use. Never the shared servers: crash faults stop and kill these.
    pub async fn chaos_rig(&self) -> anyhow::Result<Arc<crate::chaos::Rig>> {
        if !self.is_local() {
            bail!("chaos scenarios need the local profile: they crash brokers and databases of their own");
        }
        let mut slot = self.chaos.lock().await;
        if slot.is_none() {
            let started = crate::chaos::Rig::start(&self.run_id).await.map(Arc::new).map_err(|e| format!("{e:#}"));
            *slot = Some(started);
        }
        match slot.as_ref().expect("set above") {
            Ok(rig) => Ok(rig.clone()),
            Err(why) => bail!("the private broker and database for chaos scenarios did not start: {why}"),
        }
    }

    /// A chaos pipeline named `slug` on the run's rig.
    pub async fn chaos_pipeline(
        &self,
        slug: &str,
    ) -> anyhow::Result<(Arc<crate::chaos::Rig>, crate::chaos::ChaosPipeline)> {
        let rig = self.chaos_rig().await?;
        let p = crate::chaos::ChaosPipeline::start(&self.config, &rig, &self.run_id, slug).await?;
        Ok((rig, p))
    }

    /// Stops everything the run started and drops its database.
    pub async fn shutdown(&self) {
        if let Some(Ok(rig)) = self.chaos.lock().await.take() {
            match Arc::try_unwrap(rig) {
                Ok(rig) => rig.stop().await,
                // Still held by a scenario: its drop kills the servers and removes their files.
                Err(_) => eprintln!("warning: the chaos rig is still in use at shutdown; dropping it"),
            }
        }
        self.shared.teardown().await;
        if let Some(name) = &self.created_db
            && let Err(e) = crate::sql::drop_database(&self.config.database_url, name).await
        {
            eprintln!("warning: could not drop run database {name}: {e:#}");
        }
        if let Err(e) = crate::sql::drop_roles(&self.config.database_url, &self.created_roles).await {
            eprintln!("warning: could not drop the run's roles {:?}: {e:#}", self.created_roles);
        }
    }

    pub fn report_dir(&self) -> PathBuf {
        self.config.report_dir.clone()
    }
}

async fn new_local_pipeline(
    config: &Config,
    conn: &Arc<lapin::Connection>,
    namespace: &str,
    mut service_env: Vec<(String, String)>,
    writer_env: Vec<(String, String)>,
    id_prefix: &str,
) -> anyhow::Result<Pipeline> {
    let names = Names::new(namespace);
    service_env.retain(|(k, _)| k != "APQ_NAMESPACE");
    service_env.push(("APQ_NAMESPACE".into(), namespace.into()));
    let log_dir = config.report_dir.join("sut-logs").join(namespace);
    let procs = Processes::new(sut_command(config)?, service_env.clone(), log_dir, id_prefix)?
        .with_component_env(Component::DataWriter, writer_env);
    // Taps first: they declare the fanouts, and must exist before anything is published.
    let tap = Tap::start(&config.amqp_url, &names, Topology::Owned).await?;
    let publisher = Publisher::new(conn, names.clone(), Topology::Owned).await?;
    Ok(Pipeline { names, tap, publisher, api: None, procs: Some(procs), service_env, conn: conn.clone() })
}

/// The adapter command of the local profile: `sut_command` split on whitespace, else the
/// reference launcher built beside the runner.
pub fn sut_command(config: &Config) -> anyhow::Result<Vec<String>> {
    match &config.sut_command {
        Some(c) => Ok(c.split_whitespace().map(String::from).collect()),
        None => Ok(vec![crate::paths::reference_sut_binary()?.display().to_string()]),
    }
}

/// `QA_SUT_ENV` (fault injection and tuning for the services under test), e.g.
/// `QA_SUT_ENV="APQ_ALGORITHM_A_FAULT_DROP_EVERY=10,APQ_API_FAULT_SKIP_AUTH=true"`.
pub fn sut_env_overrides() -> anyhow::Result<Vec<(String, String)>> {
    let Ok(extra) = std::env::var("QA_SUT_ENV") else { return Ok(vec![]) };
    extra
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').with_context(|| format!("QA_SUT_ENV entry {pair:?} is not KEY=VALUE"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The same libpq URL with another user (no password: the local profile's server trusts
/// loopback, as `scripts/infra.sh` sets it up).
pub fn with_user(url: &str, user: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let rest = &url[scheme_end..];
    // The user part ends at the last '@' before the path (a query may hold '@' too).
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = rest[..authority_end].rfind('@').map(|at| &rest[at + 1..]).unwrap_or(rest);
    Ok(format!("{}{user}@{host}", &url[..scheme_end]))
}

/// The same libpq URL with another database name.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("database URL has no scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = base[scheme_end..].find('/').map(|i| scheme_end + i).unwrap_or(base.len());
    Ok(format!("{}/{db}{query}", &base[..host_end]))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x").unwrap(), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/a?sslmode=disable", "x").unwrap(), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h:1", "x").unwrap(), "postgres://u@h:1/x");
    }

    #[test]
    fn replaces_the_user() {
        use super::with_user;
        assert_eq!(with_user("postgres://postgres@h:5432/db", "w").unwrap(), "postgres://w@h:5432/db");
        assert_eq!(with_user("postgres://u:pw@h/db?x=1", "r").unwrap(), "postgres://r@h/db?x=1");
        assert_eq!(with_user("postgres://h:5432/db", "w").unwrap(), "postgres://w@h:5432/db");
        assert_eq!(
            with_user("postgres://u@h/db?application_name=a@b", "w").unwrap(),
            "postgres://w@h/db?application_name=a@b"
        );
    }
}
