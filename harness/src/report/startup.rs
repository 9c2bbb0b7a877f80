//! A failed start of the test environment, said so a person can act on it:
//! `what failed — host:port — cause — what to try`, without Debug formatting and without the same
//! cause repeated by each layer of context; plus the Cucumber JSON a CI still publishes for it.

use serde_json::json;

/// Where the run would have connected.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub amqp_url: String,
    pub database_url: String,
    pub api_url: Option<String>,
}

/// One line per failure: `what failed — host:port — cause — what to try`.
pub fn explain(err: &anyhow::Error, at: &Endpoints) -> String {
    let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    let all = chain.join(" | ");
    let has = |needle: &str| all.contains(needle);
    let (what, endpoint, try_) = if has("connecting to the broker") || has("the broker") {
        (
            "RabbitMQ (the broker)",
            host_port(&at.amqp_url, 5672),
            "start it with `scripts/infra.sh up`, or check QA_AMQP_URL",
        )
    } else if has("no reference SUT binary") {
        (
            "the services under test",
            "-".to_string(),
            "build them with `cargo build --workspace`, or set QA_SUT_COMMAND to your adapter",
        )
    } else if has("migrate") {
        (
            "setting up the run database (`<adapter> migrate`)",
            host_port(&at.database_url, 5432),
            "read its log in the run's sut-logs/ folder; check QA_DATABASE_URL and QA_SUT_COMMAND",
        )
    } else if has("PostgreSQL") || has("database") || has("postgres") {
        (
            "PostgreSQL (the database)",
            host_port(&at.database_url, 5432),
            "start it with `scripts/infra.sh up`, or check QA_DATABASE_URL",
        )
    } else if let Some(component) = chain.iter().find_map(|c| c.strip_prefix("starting ")) {
        return format!(
            "starting the service `{component}` — - — {} — read its log in the run's sut-logs/ folder; check QA_SUT_COMMAND and QA_SUT_ENV",
            cause(&chain)
        );
    } else if has("API") || has("http") {
        (
            "the REST API",
            at.api_url.as_deref().map(|u| host_port(u, 80)).unwrap_or_else(|| "-".into()),
            "check QA_API_URL and QA_API_TOKEN",
        )
    } else {
        (
            "starting the test environment",
            "-".to_string(),
            "run `scripts/infra.sh status`; check the QA_* variables (README: Profiles)",
        )
    };
    format!("{what} — {endpoint} — {} — {try_}", cause(&chain))
}

/// The deepest cause, once, on one line: the outer layers of context say what was being done,
/// which `what failed` and `host:port` already say, and each tends to repeat the cause.
fn cause(chain: &[String]) -> String {
    let root = chain.iter().rev().map(|c| c.trim()).find(|c| !c.is_empty()).unwrap_or("unknown cause");
    let flat: Vec<&str> = root.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = flat.join(" ");
    line.trim_end_matches(':').to_owned()
}

/// `host:port` of a URL (`amqp://u:p@h:5672/%2f` → `h:5672`), with the scheme's default port.
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    if host.is_empty() {
        // libpq URLs may leave the host to `?host=`: say so rather than guess.
        return format!("(host from the URL's parameters; default port {default_port})");
    }
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']');
    if has_port { host.to_owned() } else { format!("{host}:{default_port}") }
}

/// A Cucumber JSON document with one failed scenario carrying `message`, so CI publishes this
/// run's failure instead of the previous run's results.
pub fn cucumber_json(message: &str) -> serde_json::Value {
    json!([{
        "uri": "environment",
        "id": "environment",
        "keyword": "Feature",
        "name": "Test environment",
        "line": 1,
        "description": "",
        "tags": [],
        "elements": [{
            "keyword": "Scenario",
            "type": "scenario",
            "id": "environment;the-test-environment-starts",
            "name": "The test environment starts",
            "line": 1,
            "tags": [],
            "steps": [{
                "keyword": "Given ",
                "name": "the broker, the database and the services under test are up",
                "line": 1,
                "result": { "status": "failed", "error_message": message, "duration": 0 }
            }]
        }]
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    fn at() -> Endpoints {
        Endpoints {
            amqp_url: "amqp://guest:guest@127.0.0.1:5673/%2f".into(),
            database_url: "postgres://postgres@127.0.0.1/postgres".into(),
            api_url: None,
        }
    }

    #[test]
    fn a_refused_broker_reads_what_where_why_and_what_to_try() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let err = Err::<(), _>(io)
            .context("IO error: Connection refused (os error 111)")
            .context("connecting to the broker at amqp://guest:***@127.0.0.1:5673/%2f")
            .unwrap_err();
        let line = explain(&err, &at());
        assert_eq!(
            line,
            "RabbitMQ (the broker) — 127.0.0.1:5673 — Connection refused (os error 111) — start it with `scripts/infra.sh up`, or check QA_AMQP_URL"
        );
        assert_eq!(line.matches("Connection refused").count(), 1, "the cause once: {line}");
    }

    #[test]
    fn a_database_without_port_gets_the_default_and_no_debug_text() {
        let err = anyhow::anyhow!("error connecting to server: Connection refused (os error 111)")
            .context("connecting to PostgreSQL database postgres at 127.0.0.1:5432");
        let line = explain(&err, &at());
        assert_eq!(
            line,
            "PostgreSQL (the database) — 127.0.0.1:5432 — error connecting to server: Connection refused (os error 111) — start it with `scripts/infra.sh up`, or check QA_DATABASE_URL"
        );
        assert!(line.contains("QA_DATABASE_URL") && line.contains("scripts/infra.sh up"), "{line}");
        assert!(!line.contains("Some(") && !line.contains("Tcp("), "{line}");
    }

    #[test]
    fn host_port_handles_credentials_defaults_and_ipv6() {
        assert_eq!(host_port("amqp://u:p@rabbit:5672/%2f", 5672), "rabbit:5672");
        assert_eq!(host_port("postgres://u@db/x", 5432), "db:5432");
        assert_eq!(host_port("http://[::1]:8000", 80), "[::1]:8000");
    }

    #[test]
    fn the_cucumber_json_carries_the_error_as_a_failed_step() {
        let v = cucumber_json("RabbitMQ — 127.0.0.1:5672 — refused — try");
        assert_eq!(v[0]["elements"][0]["steps"][0]["result"]["status"], "failed");
    }
}
