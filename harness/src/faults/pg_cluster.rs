//! A private PostgreSQL cluster for crash faults: stop (fast or immediate, i.e. a crash), start
//! with recovery, restart. Never the machine's shared server.
//!
//! The cluster lives in `<dir>/postgres-<id>` (data, log, socket) and is removed when dropped.
//! PostgreSQL refuses to run as root, so as root `initdb` and `pg_ctl` run as the `postgres`
//! user (`runuser -u postgres --`), which then owns the directory; `dir` must be reachable by
//! that user (the system temp dir is). Trust auth on 127.0.0.1 only, default fsync, small
//! shared_buffers; `initdb --no-sync` (only skips flushing the fresh files). Override the
//! binaries' directory with `QA_PG_BINDIR`.

use super::{free_port, run, tail};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `pg_ctl` may wait for a start (crash recovery included) or a stop.
const PG_CTL_WAIT_SECS: u64 = 60;
/// Our own limit on any one command, above pg_ctl's so its message wins.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);

/// The programs a private cluster needs.
pub(crate) struct Binaries {
    /// `initdb`.
    initdb: PathBuf,
    /// `pg_ctl`.
    pg_ctl: PathBuf,
    /// `runuser` when running as root (PostgreSQL refuses root), else None.
    runuser: Option<PathBuf>,
}

impl Binaries {
    pub(crate) fn find() -> Result<Binaries, String> {
        let dir = match std::env::var("QA_PG_BINDIR") {
            Ok(d) => PathBuf::from(d),
            Err(_) => newest_debian_bindir()
                .or_else(|| super::on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
                .ok_or(
                    "no initdb under /usr/lib/postgresql/*/bin nor on PATH (install postgresql, or set QA_PG_BINDIR)",
                )?,
        };
        let find = |name: &str| {
            super::executable(&dir.join(name)).ok_or_else(|| format!("no {} (QA_PG_BINDIR?)", dir.join(name).display()))
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let runuser = if root {
            let r = super::on_path("runuser")
                .ok_or("running as root, PostgreSQL needs `runuser` (util-linux) to run as postgres")?;
            postgres_ids().ok_or("running as root, PostgreSQL needs a `postgres` user to run as")?;
            Some(r)
        } else {
            None
        };
        Ok(Binaries { initdb: find("initdb")?, pg_ctl: find("pg_ctl")?, runuser })
    }

    /// The command, run as postgres when we are root.
    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = match &self.runuser {
            Some(r) => {
                let mut c = tokio::process::Command::new(r);
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.env("LC_ALL", "C");
        cmd
    }
}

/// `/usr/lib/postgresql/<highest version>/bin` if it has initdb.
fn newest_debian_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// The postgres user's uid and gid.
fn postgres_ids() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to a static record we only read at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A private cluster. Dropping it stops the server (immediate) and removes its directory.
pub struct PrivatePostgres {
    /// What runs initdb and pg_ctl.
    bin: Binaries,
    /// `<dir>/postgres-<id>`: removed on drop.
    dir: PathBuf,
    /// The port, kept across restarts so URLs stay valid.
    port: u16,
    /// Whether we believe the server is up (so drop knows to stop it).
    running: bool,
    /// How long the last start took (pg_ctl -w until a connection succeeds).
    last_start: Duration,
    /// How long initdb took.
    init_time: Duration,
}

impl PrivatePostgres {
    /// initdb + start in `<dir>/postgres-<id>` on a free port; waits until it accepts a
    /// connection. On failure the server is stopped and the directory removed.
    pub async fn start(dir: &Path) -> anyhow::Result<PrivatePostgres> {
        let bin = Binaries::find().map_err(anyhow::Error::msg).context("a private PostgreSQL cannot start")?;
        // Short: the socket path (<dir>/sock/.s.PGSQL.<port>) must stay under 107 bytes.
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let node_dir = dir.join(format!("postgres-{id}"));
        std::fs::create_dir_all(node_dir.join("sock")).with_context(|| format!("creating {}", node_dir.display()))?;
        let mut pg = PrivatePostgres {
            bin,
            dir: node_dir,
            port: free_port()?,
            running: false,
            last_start: Duration::ZERO,
            init_time: Duration::ZERO,
        };
        // From here on `pg` is dropped on any error, which stops and removes what exists.
        if pg.dir.join("sock/.s.PGSQL.65535").as_os_str().len() > 100 {
            bail!("{} is too deep for a Unix socket path; use a shorter dir (e.g. /tmp)", pg.dir.display());
        }
        if pg.bin.runuser.is_some() {
            let (uid, gid) = postgres_ids().context("the postgres user vanished")?;
            for d in [pg.dir.clone(), pg.dir.join("sock")] {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))
                    .with_context(|| format!("giving {} to the postgres user", d.display()))?;
            }
        }
        let began = Instant::now();
        let mut initdb = pg.bin.command(&pg.bin.initdb);
        initdb
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--no-locale"])
            .current_dir(&pg.dir);
        run(initdb, "initdb", COMMAND_DEADLINE).await.with_context(|| {
            format!(
                "initdb of a private cluster in {} (the postgres user must be able to reach that path)",
                pg.dir.display()
            )
        })?;
        pg.init_time = began.elapsed();
        pg.start_again().await?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The TCP listener (put a [`super::Proxy`] in front of it for link faults).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// How long the last start took until a connection succeeded.
    pub fn last_start(&self) -> Duration {
        self.last_start
    }
    /// How long initdb took.
    pub fn init_time(&self) -> Duration {
        self.init_time
    }

    async fn pg_ctl(&self, args: &[&str], what: &str) -> anyhow::Result<()> {
        let mut cmd = self.bin.command(&self.bin.pg_ctl);
        cmd.arg("-D").arg(self.data()).args(args).current_dir(&self.dir);
        run(cmd, what, COMMAND_DEADLINE).await.map(|_| ()).with_context(|| {
            format!(
                "private PostgreSQL on 127.0.0.1:{}; log {}:\n{}",
                self.port,
                self.log().display(),
                tail(&self.log(), 15)
            )
        })
    }

    /// Starts the server (with crash recovery after [`stop_immediate`](Self::stop_immediate)) and
    /// waits until it accepts a connection.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let began = Instant::now();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers=16MB -c max_connections=50",
            self.port,
            self.dir.join("sock").display()
        );
        let log = self.log().display().to_string();
        let wait = PG_CTL_WAIT_SECS.to_string();
        self.running = true; // from now on drop must try to stop it
        self.pg_ctl(&["-l", &log, "-w", "-t", &wait, "-o", &opts, "start"], "pg_ctl start").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    drop(client);
                    drop(conn);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("private PostgreSQL started but 127.0.0.1:{} refuses connections for 30 s: {e}", self.port)
                }
                // A poll: pg_ctl -w said ready, so this is at most a few milliseconds.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.last_start = began.elapsed();
        Ok(())
    }

    /// A clean shutdown (`pg_ctl stop -m fast`: sessions are ended, a checkpoint is written).
    pub async fn stop_fast(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "-t", &PG_CTL_WAIT_SECS.to_string(), "stop"], "pg_ctl stop -m fast").await?;
        self.running = false;
        Ok(())
    }

    /// A crash (`pg_ctl stop -m immediate`: no checkpoint; the next start recovers from WAL).
    pub async fn stop_immediate(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(
            &["-m", "immediate", "-w", "-t", &PG_CTL_WAIT_SECS.to_string(), "stop"],
            "pg_ctl stop -m immediate",
        )
        .await?;
        self.running = false;
        Ok(())
    }

    /// Fast stop, then start.
    pub async fn restart_fast(&mut self) -> anyhow::Result<()> {
        self.stop_fast().await?;
        self.start_again().await
    }

    /// Stops (fast) and removes the directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.running {
            self.stop_fast().await?;
        }
        Ok(()) // Drop removes the directory.
    }

    /// The postmaster's pid, from its pid file (None when stopped), for leak checks.
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            // Synchronous (drop cannot await); pg_ctl's own -t bounds it.
            let mut cmd = match &self.bin.runuser {
                Some(r) => {
                    let mut c = std::process::Command::new(r);
                    c.args(["-u", "postgres", "--"]).arg(&self.bin.pg_ctl);
                    c
                }
                None => std::process::Command::new(&self.bin.pg_ctl),
            };
            let stopped = cmd
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "20", "stop"])
                .current_dir(&self.dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped && let Some(pid) = self.postmaster_pid() {
                // SAFETY: kill(2) on the postmaster of our own data directory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove private PostgreSQL dir {}: {e}", self.dir.display());
        }
    }
}
