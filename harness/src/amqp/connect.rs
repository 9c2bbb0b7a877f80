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

/// A channel on which queue `name` exists: the deployment's own queue when it has one (checked
/// passively, so its arguments are never contested), else one declared the contract's way.
pub async fn ensure_queue(conn: &lapin::Connection, name: &str) -> anyhow::Result<lapin::Channel> {
    let ch = conn.create_channel().await?;
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    if ch.queue_declare(name.into(), passive, lapin::types::FieldTable::default()).await.is_ok() {
        return Ok(ch);
    }
    // A failed passive declare closes its channel; declare on a fresh one.
    let ch = conn.create_channel().await?;
    services::topology::durable_queue(&ch, name).await.with_context(|| format!("declaring queue {name}"))?;
    Ok(ch)
}
