//! A private RabbitMQ node for crash faults: stop/start the app, SIGKILL and restart on the same
//! data, close every connection, raise a memory alarm. Never the machine's shared broker.
//!
//! Everything of the node lives in `<dir>/rabbit-<run id>` and is removed when it is dropped:
//! - its own epmd on a free port (`ERL_EPMD_PORT`), started by us, so the shared epmd never sees
//!   it and a kill never leaves a registration behind;
//! - its own Erlang cookie in `<node dir>/home/.erlang.cookie` (`HOME` for the server and for
//!   `rabbitmqctl`), so the shared cookie is neither needed nor read;
//! - its own `RABBITMQ_CONF_ENV_FILE` (empty) and `RABBITMQ_CONFIG_FILE`: Debian's
//!   `/etc/rabbitmq/rabbitmq-env.conf` sets `NODENAME=rabbit@localhost`, and `rabbitmq.conf` binds
//!   5672 — both must be kept away;
//! - the real start script `/usr/lib/rabbitmq/bin/rabbitmq-server`, not the `/usr/sbin` wrapper,
//!   which `su`s to the `rabbitmq` user (whose home holds the shared cookie). Running as root is
//!   fine for RabbitMQ. The script is started as a process-group leader; kills go to the group.
//!
//! Override the scripts' directory with `QA_RABBITMQ_SBIN`.

use super::{free_port, kill_group, run, tail, wait_exit, wait_group_gone};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to accept AMQP after a start (boot is ~5 s on a quiet 2-core box).
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// How long one `rabbitmqctl` call may take (each starts an Erlang VM: ~1–1.5 s here).
const CTL_DEADLINE: Duration = Duration::from_secs(60);

/// The programs a private node needs.
pub(crate) struct Binaries {
    /// The start script (not the Debian wrapper).
    server: PathBuf,
    /// The control script.
    ctl: PathBuf,
    /// Erlang's port mapper, run privately per node.
    epmd: PathBuf,
}

impl Binaries {
    pub(crate) fn find() -> Result<Binaries, String> {
        let sbin = std::env::var("QA_RABBITMQ_SBIN").unwrap_or_else(|_| "/usr/lib/rabbitmq/bin".into());
        let sbin = Path::new(&sbin);
        let server = super::executable(&sbin.join("rabbitmq-server")).ok_or_else(|| {
            format!(
                "no {} (install rabbitmq-server, or set QA_RABBITMQ_SBIN to the directory of its real scripts)",
                sbin.join("rabbitmq-server").display()
            )
        })?;
        let ctl = super::executable(&sbin.join("rabbitmqctl"))
            .ok_or_else(|| format!("no {} next to rabbitmq-server", sbin.join("rabbitmqctl").display()))?;
        let epmd = super::on_path("epmd")
            .or_else(|| super::executable(Path::new("/usr/lib/erlang/bin/epmd")))
            .ok_or("no epmd on PATH nor in /usr/lib/erlang/bin (install erlang-base)")?;
        Ok(Binaries { server, ctl, epmd })
    }
}

/// One queue's depth, for drain checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct QueueDepth {
    /// The queue's name.
    pub name: String,
    /// Messages waiting for a consumer.
    #[serde(rename = "messages_ready")]
    pub ready: u64,
    /// Messages delivered and not yet acked.
    #[serde(rename = "messages_unacknowledged")]
    pub unacked: u64,
}

/// A running private node. Dropping it kills the node and its epmd and removes its directory.
pub struct PrivateRabbit {
    /// Where the programs are.
    bin: Binaries,
    /// `<dir>/rabbit-<run id>`: data, logs, config, cookie; removed on drop.
    dir: PathBuf,
    /// `qa-<run id>@localhost`.
    node: String,
    /// AMQP listener on 127.0.0.1.
    amqp_port: u16,
    /// Erlang distribution port (for rabbitmqctl).
    dist_port: u16,
    /// The private epmd's port.
    epmd_port: u16,
    /// The private epmd (killed on drop; never the shared one).
    epmd: Option<Child>,
    /// The start script, leader of the node's process group; None while killed or stopped.
    server: Option<Child>,
    /// How long the last start took until AMQP answered.
    last_start: Duration,
}

impl PrivateRabbit {
    /// Starts a node named `qa-<run_id>@localhost` in `<dir>/rabbit-<run_id>` on free ports and
    /// waits until it accepts AMQP. On failure everything started is killed and removed.
    pub async fn start(dir: &Path, run_id: &str) -> anyhow::Result<PrivateRabbit> {
        let bin = Binaries::find().map_err(anyhow::Error::msg).context("a private RabbitMQ node cannot start")?;
        let node_dir = dir.join(format!("rabbit-{run_id}"));
        if node_dir.exists() {
            bail!("{} already exists (a node of the same run id?); pick another run id", node_dir.display());
        }
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(node_dir.join(sub)).with_context(|| format!("creating {}", node_dir.display()))?;
        }
        let mut node = PrivateRabbit {
            bin,
            dir: node_dir,
            node: format!("qa-{run_id}@localhost"),
            amqp_port: free_port()?,
            dist_port: free_port()?,
            epmd_port: free_port()?,
            epmd: None,
            server: None,
            last_start: Duration::ZERO,
        };
        // From here on `node` is dropped on any error, which kills and removes what exists.
        node.write_config()?;
        node.start_epmd().await?;
        node.start_again().await?;
        Ok(node)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let cookie = self.dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string().to_uppercase())
            .with_context(|| format!("writing {}", cookie.display()))?;
        // Erlang refuses a cookie others can read.
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        std::fs::write(self.dir.join("env.conf"), "# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n")?;
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n\
                 # the default 40% of RAM would let a test fill the machine\n\
                 vm_memory_high_watermark.relative = 0.2\ndisk_free_limit.absolute = 50MB\n",
                self.amqp_port
            ),
        )?;
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n")?;
        Ok(())
    }

    /// The environment both the server and rabbitmqctl get: only what is set here (env_clear),
    /// so a caller's `RABBITMQ_*` cannot point the node at the shared broker's files.
    fn env(&self, cmd: &mut std::process::Command) {
        let d = |s: &str| self.dir.join(s).display().to_string();
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", d("home"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", d("env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d("mnesia/plugins-expand"))
            .env("RABBITMQ_PID_FILE", d("node.pid"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .current_dir(&self.dir);
    }

    async fn start_epmd(&mut self) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new(&self.bin.epmd);
        cmd.args(["-port", &self.epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.epmd = Some(cmd.spawn().with_context(|| format!("starting {}", self.bin.epmd.display()))?);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.epmd_port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the private epmd did not listen on {addr} within 10 s (port taken? try again)");
            }
            // A poll: epmd binds within milliseconds of starting.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Starts the node (first start, or after [`kill9`](Self::kill9) / [`stop`]-less restarts) on
    /// the same data and ports, and waits until it accepts AMQP.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            bail!("node {} is already running", self.node);
        }
        let began = Instant::now();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .context("opening the node's console log")?;
        let mut cmd = std::process::Command::new(&self.bin.server);
        self.env(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        self.server = Some(cmd.spawn().with_context(|| format!("starting {}", self.bin.server.display()))?);
        self.wait_ready("start").await?;
        self.last_start = began.elapsed();
        Ok(())
    }

    /// Waits until an AMQP handshake succeeds, failing early if the node exits.
    async fn wait_ready(&mut self, after: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                lapin::Connection::connect(&self.amqp_url(), lapin::ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(conn)) = attempt {
                let _ = conn.close(200, "ready check".into()).await;
                return Ok(());
            }
            if let Some(server) = &mut self.server
                && let Ok(Some(status)) = server.try_wait()
            {
                self.server = None;
                bail!(
                    "private RabbitMQ node {} exited ({status}) during {after} before accepting AMQP on 127.0.0.1:{}; \
                     console {}:\n{}log {}:\n{}",
                    self.node,
                    self.amqp_port,
                    self.dir.join("server.out").display(),
                    tail(&self.dir.join("server.out"), 10),
                    self.log_file().display(),
                    tail(&self.log_file(), 15)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "private RabbitMQ node {} did not accept an AMQP handshake on 127.0.0.1:{} within {READY_DEADLINE:?} \
                     after {after} (machine overloaded?); log {}:\n{}",
                    self.node,
                    self.amqp_port,
                    self.log_file().display(),
                    tail(&self.log_file(), 15)
                );
            }
            // A poll: the listener opens late in boot, and a refused connect returns at once.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node))
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }
    /// `qa-<run id>@localhost`, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }
    /// The AMQP listener (put a [`super::Proxy`] in front of it for link faults).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }
    /// The node's directory (data, logs, config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// How long the last (re)start took until AMQP answered.
    pub fn last_start(&self) -> Duration {
        self.last_start
    }
    /// Whether the node's process is running (false after kill9/stop).
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(|s| matches!(s.try_wait(), Ok(None)))
    }

    /// The process groups this node started (server script, epmd), for leak checks: after
    /// stop/drop no process may remain in them.
    pub fn process_groups(&self) -> Vec<u32> {
        [&self.server, &self.epmd].into_iter().flatten().map(Child::id).collect()
    }

    /// `rabbitmqctl -n <this node> <args>`, with this node's cookie and epmd; its stdout.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(&self.bin.ctl);
        self.env(&mut cmd);
        cmd.arg("-n").arg(&self.node).args(args);
        run(cmd.into(), &format!("rabbitmqctl -n {} {}", self.node, args.join(" ")), CTL_DEADLINE).await
    }

    /// Stops the RabbitMQ application (connections drop, the Erlang node stays up).
    pub async fn stop_app(&self) -> anyhow::Result<()> {
        self.ctl(&["stop_app"]).await.map(|_| ())
    }

    /// Starts the application again and waits until AMQP answers.
    pub async fn start_app(&mut self) -> anyhow::Result<()> {
        let began = Instant::now();
        self.ctl(&["start_app"]).await?;
        self.wait_ready("start_app").await?;
        self.last_start = began.elapsed();
        Ok(())
    }

    /// SIGKILLs the node (its whole process group); data stays for [`start_again`](Self::start_again).
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let Some(mut server) = self.server.take() else { bail!("node {} is not running", self.node) };
        kill_group(server.id(), libc::SIGKILL);
        if !wait_exit(&mut server, Duration::from_secs(10)).await
            || !wait_group_gone(server.id(), Duration::from_secs(10)).await
        {
            bail!(
                "node {} (process group {}) survived SIGKILL for 10 s: {:?}",
                self.node,
                server.id(),
                super::processes_in_group(server.id())
            );
        }
        // The listener must be gone too before this returns (callers assert on it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(self.addr()))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            if Instant::now() > deadline {
                let ss =
                    std::process::Command::new("ss").args(["-ltnp"]).output().map(|o| o.stdout).unwrap_or_default();
                bail!(
                    "node {} was SIGKILLed but 127.0.0.1:{} still accepts for 10 s; listeners:\n{}",
                    self.node,
                    self.amqp_port,
                    String::from_utf8_lossy(&ss)
                );
            }
            // A poll: a killed process's sockets close as the kernel tears it down.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Closes every client connection (`rabbitmqctl close_all_connections <reason>`).
    pub async fn close_all_connections(&self, reason: &str) -> anyhow::Result<()> {
        self.ctl(&["close_all_connections", reason]).await.map(|_| ())
    }

    /// Raises (or clears) this node's memory alarm: publishers are blocked (connection.blocked)
    /// while it is on. Set directly through `rabbit_alarm`, so it is immediate and the memory
    /// monitor does not clear it at its next check (it only clears alarms it raised itself).
    pub async fn set_memory_alarm(&self, on: bool) -> anyhow::Result<()> {
        let expr = if on {
            "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []})."
        } else {
            "rabbit_alarm:clear_alarm({resource_limit, memory, node()})."
        };
        self.ctl(&["eval", expr]).await.map(|_| ())
    }

    /// Sets policy `name` on the queues whose names match `pattern` (a regex), with `definition`
    /// (JSON, e.g. `{"max-length":0,"overflow":"reject-publish"}`) and a priority above any other.
    pub async fn set_queue_policy(&self, name: &str, pattern: &str, definition: &str) -> anyhow::Result<()> {
        let args = ["set_policy", "--apply-to", "queues", "--priority", "100", name, pattern, definition];
        self.ctl(&args).await.map(|_| ())
    }

    /// Removes policy `name`.
    pub async fn clear_policy(&self, name: &str) -> anyhow::Result<()> {
        self.ctl(&["clear_policy", name]).await.map(|_| ())
    }

    /// Every queue with the policy in force on it (empty when none): (queue, policy).
    pub async fn queue_policies(&self) -> anyhow::Result<Vec<(String, String)>> {
        #[derive(serde::Deserialize)]
        struct Row {
            name: String,
            policy: serde_json::Value,
        }
        let out = self.ctl(&["list_queues", "-q", "--formatter", "json", "name", "policy"]).await?;
        let rows: Vec<Row> =
            serde_json::from_str(&out).with_context(|| format!("parsing list_queues output {out:?}"))?;
        Ok(rows.into_iter().map(|r| (r.name, r.policy.as_str().unwrap_or_default().to_string())).collect())
    }

    /// Every queue with its ready and unacked counts.
    pub async fn list_queues(&self) -> anyhow::Result<Vec<QueueDepth>> {
        let out = self
            .ctl(&["list_queues", "-q", "--formatter", "json", "name", "messages_ready", "messages_unacknowledged"])
            .await?;
        serde_json::from_str(&out).with_context(|| format!("parsing list_queues output {out:?}"))
    }

    /// Stops the node gracefully (SIGKILL if it takes over 30 s) and removes its directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            if let Err(e) = self.ctl(&["stop"]).await {
                eprintln!("warning: graceful stop of {} failed, killing it: {e:#}", self.node);
            }
            if !wait_exit(&mut server, Duration::from_secs(30)).await {
                kill_group(server.id(), libc::SIGKILL);
                wait_exit(&mut server, Duration::from_secs(10)).await;
            }
            // The group may hold helpers (erl_child_setup) that outlive the script briefly.
            kill_group(server.id(), libc::SIGKILL);
            if !wait_group_gone(server.id(), Duration::from_secs(10)).await {
                bail!("node {}: processes outlived SIGKILL: {:?}", self.node, super::processes_in_group(server.id()));
            }
        }
        Ok(()) // Drop kills epmd and removes the directory.
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        for child in [self.server.take(), self.epmd.take()].into_iter().flatten() {
            let mut child = child;
            kill_group(child.id(), libc::SIGKILL);
            // Reaps it; SIGKILL makes this immediate.
            let _ = child.wait();
            // Its group (beam) may still be dying and writing into the directory; bounded.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !super::processes_in_group(child.id()).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove private RabbitMQ dir {}: {e}", self.dir.display());
        }
    }
}
