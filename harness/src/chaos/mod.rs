//! Chaos experiments (issue #11): a pipeline on a private broker and database, every link through
//! a fault proxy, a recording workload, and a checker kept apart from both (Jepsen's split).
//!
//! Layout:
//! - [`Rig`]: the run's private RabbitMQ node and PostgreSQL cluster (started once, on the first
//!   chaos scenario; crash faults hit only them, never the machine's shared servers).
//! - [`ChaosPipeline`] (this file): one pipeline on the rig: its own namespace and database, one
//!   [`Proxy`] per link ([`Link`]), the processes started through the SUT adapter, a tap and an
//!   API client, and the timeline of the faults applied.
//! - [`workload`]: publishes chunks at a pace through the publisher's link, republishing until
//!   confirmed, and records every confirmed id (the ground truth).
//! - [`observe`]: waits for the drain and gathers rows, taps, queue depths, latest, exits.
//! - [`checker`]: the ledger invariant over what the workload confirmed and what the pipeline did;
//!   names lost, duplicated and unexpected ids, and the recovery time.

pub mod checker;
pub mod observe;
pub mod workload;

use crate::amqp::{self, Tap, Topology};
use crate::api::ApiClient;
use crate::config::Config;
use crate::faults::{FaultEvent, LinkFault, PrivatePostgres, PrivateRabbit, Proxy};
use crate::sql::Db;
use crate::sut::{Component, Processes};
use anyhow::Context;
use chrono::{DateTime, Utc};
use contract::topology::Names;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The run's private servers.
pub struct Rig {
    /// The private broker (crash faults: stop_app, SIGKILL, alarms).
    pub rabbit: tokio::sync::Mutex<PrivateRabbit>,
    /// The private database cluster (crash faults: stop, restart).
    pub pg: tokio::sync::Mutex<PrivatePostgres>,
    /// Where the broker listens (the proxies' upstream).
    pub rabbit_addr: SocketAddr,
    /// Where the database listens (the proxies' upstream).
    pub pg_addr: SocketAddr,
    /// The broker's AMQP URL (direct, for the harness's own connections).
    pub amqp_url: String,
    /// The cluster's superuser URL (database `postgres`).
    pub pg_url: String,
    /// The directory both live in, removed at the end.
    dir: PathBuf,
}

impl Rig {
    /// Starts both servers under a fresh temporary directory; on failure nothing is left behind.
    pub async fn start(run_id: &str) -> anyhow::Result<Rig> {
        crate::faults::rabbitmq_available().map_err(anyhow::Error::msg)?;
        crate::faults::postgres_available().map_err(anyhow::Error::msg)?;
        // Also stops the servers a killed run left running (its directory's owner is gone).
        let dir = crate::faults::reap::fresh_run_dir(run_id).context("creating the chaos run's directory")?;
        let started = async {
            let pg = PrivatePostgres::start(&dir).await.context("starting the private PostgreSQL cluster")?;
            let rabbit = PrivateRabbit::start(&dir, run_id).await.context("starting the private RabbitMQ node")?;
            anyhow::Ok((rabbit, pg))
        }
        .await;
        let (rabbit, pg) = match started {
            Ok(both) => both,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Rig {
            rabbit_addr: rabbit.addr(),
            pg_addr: pg.addr(),
            amqp_url: rabbit.amqp_url(),
            pg_url: pg.url(),
            rabbit: tokio::sync::Mutex::new(rabbit),
            pg: tokio::sync::Mutex::new(pg),
            dir,
        })
    }

    /// Stops both servers and removes their directory.
    pub async fn stop(self) {
        let Rig { rabbit, pg, dir, .. } = self;
        if let Err(e) = rabbit.into_inner().stop().await {
            eprintln!("warning: stopping the private RabbitMQ node: {e:#}");
        }
        if let Err(e) = pg.into_inner().stop().await {
            eprintln!("warning: stopping the private PostgreSQL cluster: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A fault of the private servers, as data: what to do to start it and (for lasting ones) to heal it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ServerFault {
    /// `rabbitmqctl stop_app`, healed by `start_app`.
    BrokerStopApp,
    /// SIGKILL of the broker node, then a start on the same data (one action).
    BrokerKillRestart,
    /// `close_all_connections` (one action).
    BrokerCloseAll,
    /// A memory alarm (publishers block), healed by clearing it.
    BrokerMemoryAlarm,
    /// `pg_ctl stop -m fast`, healed by starting it again.
    DatabaseStop,
    /// `pg_ctl restart -m fast` (one action).
    DatabaseRestart,
}

impl ServerFault {
    /// How reports name it.
    pub fn name(self) -> &'static str {
        match self {
            ServerFault::BrokerStopApp => "broker: stop_app",
            ServerFault::BrokerKillRestart => "broker: SIGKILL, restart",
            ServerFault::BrokerCloseAll => "broker: close_all_connections",
            ServerFault::BrokerMemoryAlarm => "broker: memory alarm",
            ServerFault::DatabaseStop => "database: stopped (fast)",
            ServerFault::DatabaseRestart => "database: fast restart",
        }
    }
}

impl Rig {
    /// Starts `fault` (the whole of it for one-action faults).
    pub async fn inject(&self, fault: ServerFault) -> anyhow::Result<()> {
        match fault {
            ServerFault::BrokerStopApp => self.rabbit.lock().await.stop_app().await,
            ServerFault::BrokerKillRestart => {
                let mut rabbit = self.rabbit.lock().await;
                rabbit.kill9().await?;
                rabbit.start_again().await
            }
            ServerFault::BrokerCloseAll => {
                self.rabbit.lock().await.close_all_connections("chaos: close_all_connections").await
            }
            ServerFault::BrokerMemoryAlarm => self.rabbit.lock().await.set_memory_alarm(true).await,
            ServerFault::DatabaseStop => self.pg.lock().await.stop_fast().await,
            ServerFault::DatabaseRestart => self.pg.lock().await.restart_fast().await,
        }
    }

    /// Ends a lasting `fault` (nothing to do for one-action faults).
    pub async fn heal(&self, fault: ServerFault) -> anyhow::Result<()> {
        match fault {
            ServerFault::BrokerStopApp => self.rabbit.lock().await.start_app().await,
            ServerFault::BrokerMemoryAlarm => self.rabbit.lock().await.set_memory_alarm(false).await,
            ServerFault::DatabaseStop => self.pg.lock().await.start_again().await,
            ServerFault::BrokerKillRestart | ServerFault::BrokerCloseAll | ServerFault::DatabaseRestart => Ok(()),
        }
    }
}

/// A link of a chaos pipeline: one TCP connection path through one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Link {
    /// The first Algorithm A instance → broker.
    AlgorithmA1,
    /// The second Algorithm A instance → broker.
    AlgorithmA2,
    /// Algorithm B → broker.
    AlgorithmB,
    /// DataWriter → broker.
    WriterBroker,
    /// REST API (its cache consumer) → broker.
    ApiBroker,
    /// DataWriter → database.
    WriterDb,
    /// REST API → database.
    ApiDb,
    /// The workload's publisher (the sensor's place) → broker.
    Publisher,
}

impl Link {
    pub const ALL: [Link; 8] = [
        Link::AlgorithmA1,
        Link::AlgorithmA2,
        Link::AlgorithmB,
        Link::WriterBroker,
        Link::ApiBroker,
        Link::WriterDb,
        Link::ApiDb,
        Link::Publisher,
    ];
    /// The name steps and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Link::AlgorithmA1 => "algorithm-a-1",
            Link::AlgorithmA2 => "algorithm-a-2",
            Link::AlgorithmB => "algorithm-b",
            Link::WriterBroker => "writer",
            Link::ApiBroker => "api",
            Link::WriterDb => "writer-db",
            Link::ApiDb => "api-db",
            Link::Publisher => "publisher",
        }
    }
    fn to_database(self) -> bool {
        matches!(self, Link::WriterDb | Link::ApiDb)
    }
    /// The broker links, for faults on "every broker connection".
    pub fn broker_links() -> impl Iterator<Item = Link> {
        Link::ALL.into_iter().filter(|l| !l.to_database())
    }
}

impl std::str::FromStr for Link {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Link::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Link::ALL.iter().map(|l| l.name()).collect();
            format!("unknown link {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// One fault applied to a pipeline, for the report and the recovery time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultWindow {
    /// What was done, e.g. "writer-db: silent" or "broker: stop_app".
    pub what: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it ended (the healing action returned); None while it lasts.
    pub ended: Option<DateTime<Utc>>,
}

/// Ends a recorded fault from elsewhere (a background task).
pub struct FaultEnd {
    /// The pipeline's fault list.
    faults: Arc<std::sync::Mutex<Vec<FaultWindow>>>,
    /// Which fault.
    index: usize,
}

impl FaultEnd {
    pub fn end(&self) {
        if let Some(w) = self.faults.lock().expect("faults lock").get_mut(self.index) {
            w.ended = Some(Utc::now());
        }
    }
}

/// A held lock on the features table.
pub struct TableLock {
    /// The session holding it (inside an open transaction).
    client: tokio_postgres::Client,
    /// Its connection task.
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl TableLock {
    /// Ends the transaction, releasing the lock.
    pub async fn release(self) -> anyhow::Result<()> {
        self.client.batch_execute("ROLLBACK").await.context("releasing the features table lock")?;
        drop(self.client);
        let _ = self.task.await;
        Ok(())
    }
}

/// A pipeline on the rig with every link behind a proxy.
pub struct ChaosPipeline {
    /// Its broker names (namespace `qa-<run>-chaos-<slug>`).
    pub names: Names,
    /// The components, started through the SUT adapter.
    pub procs: Processes,
    /// One proxy per link.
    pub proxies: BTreeMap<Link, Proxy>,
    /// Captures its fanouts and dead letters (connected directly, not through a proxy).
    pub tap: Tap,
    /// Its REST API, reached directly.
    pub api: ApiClient,
    /// The AMQP URL through the publisher's proxy (the workload's).
    pub publisher_url: String,
    /// The rig's direct AMQP URL.
    pub amqp_url: String,
    /// Faults applied so far, in order (shared with faults that end in the background).
    pub faults: Arc<std::sync::Mutex<Vec<FaultWindow>>>,
    /// Its database's URL on the private cluster (direct).
    pub database_url: String,
    /// The harness's direct broker connection (clean-up).
    conn: lapin::Connection,
    /// Per-link env every (re)started instance gets.
    link_env: BTreeMap<Link, Vec<(String, String)>>,
    /// The database role the writer logs in as (its sessions are found by it).
    writer_role: String,
    /// Windows in which the broker refused publishes to a fanout, for the checker.
    pub refusals: std::sync::Mutex<Vec<checker::Refusal>>,
}

/// Settings of the chaos pipelines' processes beyond the local profile's: faster failure
/// detection, so scenarios stay short (documented defaults apply in production).
const CHAOS_ENV: &[(&str, &str)] = &[
    // Two missed beats (~10 s) declare a silent broker link dead.
    ("APQ_HEARTBEAT_SECS", "5"),
    // /metrics on an ephemeral port, announced in the ready line.
    ("APQ_HEALTH_BIND", "127.0.0.1:0"),
];

impl ChaosPipeline {
    /// Builds the pipeline: database (via `<adapter> migrate`), proxies, taps, and the processes
    /// (DataWriter, two Algorithm A, one Algorithm B, the REST API), each on its own links.
    pub async fn start(config: &Config, rig: &Rig, run_id: &str, slug: &str) -> anyhow::Result<ChaosPipeline> {
        let namespace = format!("qa-{run_id}-chaos-{slug}");
        let names = Names::new(&namespace);
        let db_name = format!("apq_chaos_{run_id}_{}", slug.replace('-', "_"));
        crate::sql::create_database(&rig.pg_url, &db_name).await.context("creating the chaos database")?;
        let database_url = crate::env::with_database(&rig.pg_url, &db_name)?;
        let mut proxies = BTreeMap::new();
        for link in Link::ALL {
            let upstream = if link.to_database() { rig.pg_addr } else { rig.rabbit_addr };
            proxies.insert(link, Proxy::start(link.name(), upstream).await?);
        }
        let amqp_via = |l: Link| format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxies[&l].port());
        let db_via = |l: Link| {
            crate::env::with_database(
                &format!("postgres://postgres@127.0.0.1:{}/postgres", proxies[&l].port()),
                &db_name,
            )
        };
        // Least privilege, as in the local profile (and as the adapter protocol's `migrate` wants):
        // the writer INSERTs, the API SELECTs, each through its own link.
        let roles = [format!("{db_name}_writer"), format!("{db_name}_reader")];
        let mut link_env = BTreeMap::new();
        for l in Link::broker_links() {
            link_env.insert(l, vec![("APQ_AMQP_URL".to_string(), amqp_via(l))]);
        }
        let writer_db = crate::env::with_user(&db_via(Link::WriterDb)?, &roles[0])?;
        let reader_db = crate::env::with_user(&db_via(Link::ApiDb)?, &roles[1])?;
        link_env.get_mut(&Link::WriterBroker).expect("a broker link").push(("APQ_DATABASE_URL".into(), writer_db));
        link_env.get_mut(&Link::ApiBroker).expect("a broker link").push(("APQ_DATABASE_URL".into(), reader_db));

        let command = crate::env::sut_command(config)?;
        let mut migrate_env = crate::env::sut_env_overrides()?;
        migrate_env.extend([
            ("APQ_DATABASE_URL".to_string(), database_url.clone()),
            ("APQ_DB_WRITER_ROLE".to_string(), roles[0].clone()),
            ("APQ_DB_READER_ROLE".to_string(), roles[1].clone()),
        ]);
        let log_dir = config.report_dir.join("sut-logs").join(&namespace);
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        crate::sut::run_once(&command, "migrate", &migrate_env, &log_dir.join("migrate.log"), Duration::from_secs(60))
            .await
            .context("setting up the chaos database (`<adapter> migrate`)")?;

        let mut service_env: Vec<(String, String)> = vec![
            ("APQ_NAMESPACE".into(), namespace.clone()),
            ("APQ_AMQP_URL".into(), rig.amqp_url.clone()),
            ("APQ_DATABASE_URL".into(), database_url.clone()),
            ("APQ_API_TOKENS".into(), format!("qa-token-{run_id}")),
            ("APQ_API_BIND".into(), "127.0.0.1:0".into()),
            ("APQ_API_RATE_LIMIT_PER_SEC".into(), "5000".into()),
            ("APQ_API_RATE_LIMIT_BURST".into(), "10000".into()),
        ];
        service_env.extend(CHAOS_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (k, v) in crate::env::sut_env_overrides()? {
            service_env.retain(|(ek, _)| *ek != k);
            service_env.push((k, v));
        }
        let procs = Processes::new(command, service_env, log_dir, &format!("chaos-{slug}"))?;
        let conn = amqp::connect(&rig.amqp_url, "qa-chaos-harness").await?;
        // Taps first: they declare the fanouts before anything is published.
        let tap = Tap::start(&rig.amqp_url, &names, Topology::Owned).await?;
        let publisher_url = amqp_via(Link::Publisher);
        let mut p = ChaosPipeline {
            names,
            procs,
            proxies,
            tap,
            api: ApiClient::new("http://127.0.0.1:1", None)?,
            publisher_url,
            amqp_url: rig.amqp_url.clone(),
            faults: Arc::default(),
            database_url: database_url.clone(),
            conn,
            link_env,
            writer_role: roles[0].clone(),
            refusals: std::sync::Mutex::default(),
        };
        let started = async {
            p.start_instance(Component::DataWriter, Link::WriterBroker).await?;
            p.start_instance(Component::AlgorithmA, Link::AlgorithmA1).await?;
            p.start_instance(Component::AlgorithmA, Link::AlgorithmA2).await?;
            p.start_instance(Component::AlgorithmB, Link::AlgorithmB).await?;
            p.start_instance(Component::RestApi, Link::ApiBroker).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = started {
            p.teardown().await;
            return Err(e.context("starting the chaos pipeline's components"));
        }
        let port = p.procs.http_port(Component::RestApi).context("the REST API announced no port")?;
        p.api = ApiClient::new(&format!("http://127.0.0.1:{port}"), Some(format!("qa-token-{run_id}")))?;
        Ok(p)
    }

    /// Starts one instance of `component` on `link` (its broker link; the writer and the API also
    /// get their database link).
    pub async fn start_instance(&self, component: Component, link: Link) -> anyhow::Result<String> {
        let env = self.link_env.get(&link).with_context(|| format!("{} is not a broker link", link.name()))?;
        let ids = self.procs.start(component, 1, env).await?;
        ids.into_iter().next().context("no instance started")
    }

    /// A fresh direct connection to its database, retried for up to 30 s (the database may be
    /// restarting: a fault of the scenario's own).
    pub async fn db(&self) -> anyhow::Result<Db> {
        let started = std::time::Instant::now();
        loop {
            match Db::connect(&self.database_url).await {
                Ok(db) => return Ok(db),
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    return Err(e.context("connecting to the chaos database (30 s)"));
                }
                // The database is coming back (after a stop or restart step): try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// The proxy of `link`.
    pub fn proxy(&self, link: Link) -> &Proxy {
        &self.proxies[&link]
    }

    /// Records the start of a fault; returns its index for [`ChaosPipeline::fault_ended`].
    pub fn fault_started(&self, what: impl Into<String>) -> usize {
        let mut f = self.faults.lock().expect("faults lock");
        f.push(FaultWindow { what: what.into(), started: Utc::now(), ended: None });
        f.len() - 1
    }

    /// Records the end of fault `index`.
    pub fn fault_ended(&self, index: usize) {
        self.fault_end_handle(index).end();
    }

    /// Ends fault `index` later, from a background task.
    pub fn fault_end_handle(&self, index: usize) -> FaultEnd {
        FaultEnd { faults: self.faults.clone(), index }
    }

    /// Takes an ACCESS EXCLUSIVE lock on the features table in a transaction of its own, held
    /// until [`TableLock::release`]: every read and write of the table waits meanwhile.
    pub async fn hold_table_lock(&self) -> anyhow::Result<TableLock> {
        let (client, connection) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .context("connecting to lock the features table")?;
        let task = tokio::spawn(connection);
        client
            .batch_execute("BEGIN; LOCK TABLE features IN ACCESS EXCLUSIVE MODE")
            .await
            .context("locking the features table")?;
        Ok(TableLock { client, task })
    }

    /// Takes a SHARE lock on the features table in a transaction of its own, held until
    /// [`TableLock::release`]: every INSERT waits meanwhile, reads go on.
    pub async fn hold_write_lock(&self) -> anyhow::Result<TableLock> {
        let (client, connection) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .context("connecting to lock the features table")?;
        let task = tokio::spawn(connection);
        client
            .batch_execute("BEGIN; LOCK TABLE features IN SHARE MODE")
            .await
            .context("locking the features table against writes")?;
        Ok(TableLock { client, task })
    }

    /// The writer's database sessions whose INSERT waits for a lock (server process ids).
    pub async fn writer_inserts_waiting(&self) -> anyhow::Result<Vec<i32>> {
        let db = self.db().await?;
        let rows = db
            .client()
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND usename = $1 \
                 AND wait_event_type = 'Lock' AND query ILIKE 'insert%'",
                &[&self.writer_role],
            )
            .await
            .context("reading pg_stat_activity")?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Ends the database sessions `pids` (those of a process killed while they waited: the
    /// server would otherwise finish their statement when the lock goes, as if the client lived).
    pub async fn terminate_sessions(&self, pids: &[i32]) -> anyhow::Result<()> {
        let db = self.db().await?;
        for pid in pids {
            db.client()
                .execute("SELECT pg_terminate_backend($1)", &[pid])
                .await
                .with_context(|| format!("terminating database session {pid}"))?;
        }
        Ok(())
    }

    /// Makes the broker refuse (nack) every publish to `fanout` (`features_a` or `features_b`):
    /// a policy of `max-length` 0 with `reject-publish` on the consumer queues bound to it (the
    /// harness's own taps, server-named, are not matched, so the refused messages stay visible).
    /// Returns once the policy is in force on each of them.
    pub async fn refuse_publishes(&self, rig: &Rig, fanout: &str) -> anyhow::Result<Refusing> {
        let n = &self.names;
        let (feature, queues) = if fanout == n.features_a() {
            ("A", vec![n.algorithm_b_queue(), n.writer_queue_a()])
        } else if fanout == n.features_b() {
            ("B", vec![n.writer_queue_b()])
        } else {
            anyhow::bail!("{fanout:?} is neither {} nor {}", n.features_a(), n.features_b());
        };
        let policy = format!("qa-refuse-{fanout}");
        let alternatives: Vec<String> = queues.iter().map(|q| q.replace('.', "\\.")).collect();
        let pattern = format!("^({})$", alternatives.join("|"));
        let i = self.fault_started(format!("broker: refuses every publish to {fanout} (max-length 0, reject-publish)"));
        let requested = Utc::now();
        let rabbit = rig.rabbit.lock().await;
        rabbit.set_queue_policy(&policy, &pattern, r#"{"max-length":0,"overflow":"reject-publish"}"#).await?;
        wait_for_policy(&rabbit, &queues, Some(&policy)).await?;
        Ok(Refusing { policy, queues, feature, index: i, requested })
    }

    /// Ends a refusal: the policy is cleared and off every queue before this returns.
    pub async fn lift_refusal(&self, rig: &Rig, r: Refusing) -> anyhow::Result<()> {
        let rabbit = rig.rabbit.lock().await;
        rabbit.clear_policy(&r.policy).await?;
        // The fault ends with the clearing (recovery counts from here); the refusal window for
        // the checker lasts until the policy is seen off every queue.
        self.fault_ended(r.index);
        wait_for_policy(&rabbit, &r.queues, None).await?;
        self.refusals.lock().expect("refusals lock").push(checker::Refusal {
            feature: r.feature.to_string(),
            from: r.requested,
            to: Utc::now(),
        });
        Ok(())
    }

    /// Applies `fault` to `links` for `hold`, then heals them; the window is recorded.
    pub async fn link_fault(&self, links: &[Link], fault: LinkFault, hold: Duration) {
        let names: Vec<&str> = links.iter().map(|l| l.name()).collect();
        let i = self.fault_started(format!("{}: {fault}", names.join("+")));
        for l in links {
            self.proxy(*l).set(fault.clone());
        }
        // The fault's duration is the experiment itself.
        tokio::time::sleep(hold).await;
        for l in links {
            self.proxy(*l).clear();
        }
        self.fault_ended(i);
    }

    /// Applies `fault` to the rig's servers, holds it for `hold` (lasting faults), heals it, and
    /// records the window; returns when it started and when it was healed.
    pub async fn server_fault(
        &self,
        rig: &Rig,
        fault: ServerFault,
        hold: Duration,
    ) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
        let i = self.fault_started(fault.name());
        rig.inject(fault).await?;
        let started = Utc::now();
        // Holding the fault is the experiment.
        tokio::time::sleep(hold).await;
        let healing = Utc::now();
        rig.heal(fault).await?;
        self.fault_ended(i);
        Ok((started, healing))
    }

    /// When the last fault ended (the recovery clock's start).
    pub fn last_fault_end(&self) -> Option<DateTime<Utc>> {
        self.faults.lock().expect("faults lock").iter().filter_map(|w| w.ended).max()
    }

    /// Everything the proxies recorded, in time order.
    pub fn link_history(&self) -> Vec<FaultEvent> {
        let mut all: Vec<FaultEvent> = self.proxies.values().flat_map(Proxy::history).collect();
        all.sort_by_key(|e| e.at);
        all
    }

    /// `/metrics` of every running process that serves it (component id → text); a process that
    /// does not answer within 2 s is reported as such.
    pub async fn metrics_snapshot(&self) -> BTreeMap<String, String> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("a plain client");
        let mut out = BTreeMap::new();
        for (id, port) in self.procs.http_ports() {
            let text = match http.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_else(|e| format!("(unreadable: {e})")),
                Err(e) => format!("(no answer: {e})"),
            };
            out.insert(id, text);
        }
        out
    }

    /// Stops the processes and deletes the namespace (the database goes with the rig).
    pub async fn teardown(&self) {
        self.procs.stop_all().await;
        amqp::delete_namespace(&self.conn, &self.names).await;
    }
}

/// A refusal in force (see [`ChaosPipeline::refuse_publishes`]).
pub struct Refusing {
    /// The policy's name.
    policy: String,
    /// The queues it refuses for.
    queues: Vec<String>,
    /// The feature type of the fanout ("A" or "B").
    feature: &'static str,
    /// Its fault window's index.
    index: usize,
    /// When it was asked for (publishes may be refused from here on).
    requested: DateTime<Utc>,
}

/// Polls the node until `policy` (None: no policy) is in force on every one of `queues` (20 s).
async fn wait_for_policy(rabbit: &PrivateRabbit, queues: &[String], policy: Option<&str>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let listed = rabbit.queue_policies().await?;
        let off: Vec<&(String, String)> =
            listed.iter().filter(|(q, p)| queues.contains(q) && p.as_str() != policy.unwrap_or("")).collect();
        if off.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "after 20 s the policy on these queues is still not {policy:?}: {off:?}"
        );
        // rabbitmqctl is the only view of policies; each call already takes a second or more.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Why chaos scenarios cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    crate::faults::rabbitmq_available().err().or_else(|| crate::faults::postgres_available().err())
}
