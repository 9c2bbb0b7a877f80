//! Opening a broker connection with a clear error.

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};

pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default().with_connection_name(name.into()))
        .await
        .with_context(|| format!("connecting to the broker at {}", redact(url)))
}

/// Hides the password of an AMQP URL in messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
