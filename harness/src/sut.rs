//! SUT control (local profile only): start, stop (SIGTERM), kill (SIGKILL), restart and scale each
//! component as real OS processes through the SUT adapter protocol
//! (`fixtures/contracts/adapter.md`): `<adapter command> <component>` with `APQ_*` variables,
//! one JSON ready line on stdout, stderr to a log file under the run's report directory.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The components a step can control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    AlgorithmA,
    AlgorithmB,
    DataWriter,
    RestApi,
}

impl Component {
    pub fn subcommand(self) -> &'static str {
        match self {
            Component::AlgorithmA => "algorithm-a",
            Component::AlgorithmB => "algorithm-b",
            Component::DataWriter => "data-writer",
            Component::RestApi => "rest-api",
        }
    }
}

impl std::str::FromStr for Component {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace(['_', ' '], "-").as_str() {
            "algorithm-a" => Ok(Component::AlgorithmA),
            "algorithm-b" => Ok(Component::AlgorithmB),
            "data-writer" | "datawriter" => Ok(Component::DataWriter),
            "rest-api" | "api" => Ok(Component::RestApi),
            other => Err(format!("unknown component {other:?}")),
        }
    }
}

/// One running instance.
struct Instance {
    /// Its `APQ_INSTANCE_ID` (shows up as `processed_by`).
    id: String,
    child: Child,
    /// The HTTP port it announced (REST API only).
    http_port: Option<u16>,
}

/// The processes of one pipeline namespace.
pub struct Processes {
    /// The adapter command: program, then its own arguments (the component is appended).
    command: Vec<String>,
    /// `APQ_*` settings every instance gets (namespace, URLs, tokens).
    env: Vec<(String, String)>,
    /// Where stderr logs go.
    log_dir: PathBuf,
    /// How long an instance may take to announce readiness.
    ready_timeout: Duration,
    /// Running instances per component.
    running: Mutex<BTreeMap<Component, Vec<Instance>>>,
    /// Counter for unique instance ids.
    next_id: Mutex<u32>,
    /// Prefix for instance ids (the namespace), so ids are unique across pipelines.
    id_prefix: String,
    /// Settings only some components get (e.g. the DataWriter's database role), over `env`.
    component_env: BTreeMap<Component, Vec<(String, String)>>,
}

impl Processes {
    pub fn new(
        command: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: PathBuf,
        id_prefix: &str,
    ) -> anyhow::Result<Self> {
        let Some(program) = command.first() else { bail!("the SUT adapter command is empty") };
        if program.contains('/') && !std::path::Path::new(program).is_file() {
            bail!(
                "the SUT adapter {program} does not exist (QA_SUT_COMMAND, or build the reference with `cargo build --workspace`)"
            );
        }
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            command,
            env,
            log_dir,
            ready_timeout: Duration::from_secs(30),
            running: Mutex::new(BTreeMap::new()),
            next_id: Mutex::new(0),
            id_prefix: id_prefix.to_string(),
            component_env: BTreeMap::new(),
        })
    }

    /// Settings every instance of `component` gets on top of the shared ones.
    pub fn with_component_env(mut self, component: Component, env: Vec<(String, String)>) -> Self {
        self.component_env.insert(component, env);
        self
    }

    /// Starts `n` more instances with extra env, each waited for until ready. Returns their ids.
    pub async fn start(
        &self,
        component: Component,
        n: usize,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let seq = {
                let mut g = self.next_id.lock().expect("id lock");
                *g += 1;
                *g
            };
            let id = format!("{}-{}-{seq}", self.id_prefix, component.subcommand());
            let log_path = self.log_dir.join(format!("{id}.log"));
            let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(&self.command[0]);
            cmd.args(&self.command[1..])
                .arg(component.subcommand())
                .envs(self.env.iter().cloned())
                .envs(self.component_env.get(&component).into_iter().flatten().cloned())
                .envs(extra_env.iter().cloned())
                .env("APQ_INSTANCE_ID", &id)
                .env("APQ_LOG_FORMAT", "text")
                .env("RUST_LOG", std::env::var("QA_SUT_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("spawning {} {}", self.command.join(" "), component.subcommand()))?;
            let stdout = child.stdout.take().expect("stdout is piped");
            let mut lines = BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(self.ready_timeout, async {
                while let Some(line) = lines.next_line().await? {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["event"] == "ready"
                    {
                        return Ok::<_, std::io::Error>(Some(v["http_port"].as_u64().map(|p| p as u16)));
                    }
                }
                Ok(None)
            })
            .await;
            let http_port = match ready {
                Ok(Ok(Some(port))) => port,
                other => {
                    let _ = child.start_kill();
                    let log_tail = tail(&log_path, 15);
                    let why = match other {
                        Err(_) => format!("no ready line within {:?}", self.ready_timeout),
                        Ok(Ok(None)) => "it exited before announcing readiness".into(),
                        Ok(Err(e)) => format!("reading its stdout failed: {e}"),
                        Ok(Ok(Some(_))) => unreachable!(),
                    };
                    bail!("{id} did not become ready: {why}\n  log {}:\n{log_tail}", log_path.display());
                }
            };
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            self.running.lock().expect("proc lock").entry(component).or_default().push(Instance {
                id: id.clone(),
                child,
                http_port,
            });
            ids.push(id);
        }
        Ok(ids)
    }

    /// (instance id, HTTP port) of every running instance that announced one (the API's port, a
    /// consumer's health/metrics port).
    pub fn http_ports(&self) -> Vec<(String, u16)> {
        let g = self.running.lock().expect("proc lock");
        g.values().flatten().filter_map(|i| i.http_port.map(|p| (i.id.clone(), p))).collect()
    }

    /// Running instance ids of a component.
    pub fn instances(&self, component: Component) -> Vec<String> {
        self.running
            .lock()
            .expect("proc lock")
            .get(&component)
            .map(|v| v.iter().map(|i| i.id.clone()).collect())
            .unwrap_or_default()
    }

    /// The HTTP port of the first running instance (REST API).
    pub fn http_port(&self, component: Component) -> Option<u16> {
        self.running.lock().expect("proc lock").get(&component)?.iter().find_map(|i| i.http_port)
    }

    fn take(&self, component: Component, count: Option<usize>) -> Vec<Instance> {
        let mut g = self.running.lock().expect("proc lock");
        let list = g.entry(component).or_default();
        let n = count.unwrap_or(list.len()).min(list.len());
        list.drain(list.len() - n..).collect()
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 10 s) of `count` instances (None = all).
    pub async fn stop(&self, component: Component, count: Option<usize>) -> anyhow::Result<usize> {
        let victims = self.take(component, count);
        let n = victims.len();
        for mut inst in victims {
            if let Some(pid) = inst.child.id() {
                // SAFETY: sending a signal to a child we spawned and still own.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            match tokio::time::timeout(Duration::from_secs(10), inst.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(id = inst.id, "did not stop within 10 s of SIGTERM; killing");
                    let _ = inst.child.kill().await;
                }
            }
        }
        Ok(n)
    }

    /// SIGKILL of `count` instances (None = all): no chance to finish or ack anything.
    pub async fn kill(&self, component: Component, count: Option<usize>) -> anyhow::Result<usize> {
        let victims = self.take(component, count);
        let n = victims.len();
        for mut inst in victims {
            let _ = inst.child.kill().await;
        }
        Ok(n)
    }

    /// Scales a component to exactly `n` instances.
    pub async fn scale(&self, component: Component, n: usize, extra_env: &[(String, String)]) -> anyhow::Result<()> {
        let current = self.instances(component).len();
        if n > current {
            self.start(component, n - current, extra_env).await?;
        } else if n < current {
            self.stop(component, Some(current - n)).await?;
        }
        Ok(())
    }

    /// Stops everything (used at the end of a run or a private pipeline).
    pub async fn stop_all(&self) {
        let components: Vec<Component> = self.running.lock().expect("proc lock").keys().copied().collect();
        for c in components {
            let _ = self.stop(c, None).await;
        }
    }

    /// (instance id, pid) of every running instance, for reading their `/proc` figures.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let g = self.running.lock().expect("proc lock");
        g.values().flatten().filter_map(|i| Some((i.id.clone(), i.child.id()?))).collect()
    }

    /// Instances the harness did not stop that have exited (a crash, a panic, an exit of its
    /// own), with their exit status. A healthy component never exits by itself.
    pub fn exited(&self) -> Vec<(String, String)> {
        let mut g = self.running.lock().expect("proc lock");
        let mut out = Vec::new();
        for inst in g.values_mut().flatten() {
            if let Ok(Some(status)) = inst.child.try_wait() {
                out.push((inst.id.clone(), status.to_string()));
            }
        }
        out
    }

    pub fn log_dir(&self) -> &std::path::Path {
        &self.log_dir
    }
}

/// Runs a one-shot adapter command (`<adapter> migrate`) to completion: Ok on exit 0 within
/// `timeout`, else an error with the tail of its log.
pub async fn run_once(
    command: &[String],
    arg: &str,
    env: &[(String, String)],
    log_path: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let program = command.first().context("the SUT adapter command is empty")?;
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = Command::new(program)
        .args(&command[1..])
        .arg(arg)
        .envs(env.iter().cloned())
        .env("APQ_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {} {arg}", command.join(" ")))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => bail!(
            "`{} {arg}` failed ({status})\n  log {}:\n{}",
            command.join(" "),
            log_path.display(),
            tail(log_path, 15)
        ),
        Ok(Err(e)) => bail!("waiting for `{} {arg}`: {e}", command.join(" ")),
        Err(_) => bail!(
            "`{} {arg}` did not finish within {timeout:?}\n  log {}:\n{}",
            command.join(" "),
            log_path.display(),
            tail(log_path, 15)
        ),
    }
}

/// One warning or error a SUT process logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedProblem {
    /// The log file (one per process instance).
    pub file: String,
    /// The line, as logged.
    pub line: String,
}

/// Warnings and errors in the SUT logs under `dir` (text or JSON format). A healthy run logs
/// none: a reconnect, a dead-lettered message or a failed ack all log one, even when the
/// pipeline recovers and nothing is lost.
/// Peak resident set (VmHWM) of a process in KiB, from `/proc/<pid>/status`; None once it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn logged_problems(dir: &std::path::Path) -> anyhow::Result<Vec<LoggedProblem>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing SUT logs in {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        for line in text.lines().filter(|l| is_problem(l)) {
            out.push(LoggedProblem { file: file.clone(), line: line.to_string() });
        }
    }
    Ok(out)
}

fn is_problem(line: &str) -> bool {
    [" WARN ", " ERROR ", "\"level\":\"WARN\"", "\"level\":\"ERROR\""].iter().any(|m| line.contains(m))
}

fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_are_found_in_text_and_json_logs() {
        let dir = std::env::temp_dir().join(format!("apq-sut-logs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("b-writer.log"),
            "2026-01-01T00:00:00Z  INFO pipeline::data_writer: consuming\n\
             2026-01-01T00:00:01Z  WARN pipeline::runtime: session failed; reconnecting\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("a-api.log"),
            "{\"level\":\"ERROR\",\"fields\":{\"message\":\"boom\"}}\n{\"level\":\"INFO\"}\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), " ERROR not a log file\n").unwrap();
        let found = logged_problems(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let files: Vec<&str> = found.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(files, ["a-api.log", "b-writer.log"], "{found:?}");
        assert!(found[1].line.contains("session failed"));
    }
}
