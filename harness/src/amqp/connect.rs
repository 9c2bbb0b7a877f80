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

/// Who owns a namespace's queues and exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// The harness created the namespace (local profile, load runs): it may declare what is
    /// missing, the contract's way, and deletes it all at the end.
    Owned,
    /// A deployment's: the harness only checks passively that things exist and never declares,
    /// purges or deletes any of them (its own exclusive queues and their bindings excepted).
    Deployed,
}

/// A channel on which queue `name` exists: the queue when it exists (checked passively, so its
/// arguments are never contested), else, in an owned namespace, one declared the contract's way.
pub async fn ensure_queue(conn: &lapin::Connection, name: &str, topology: Topology) -> anyhow::Result<lapin::Channel> {
    let ch = conn.create_channel().await?;
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    match ch.queue_declare(name.into(), passive, lapin::types::FieldTable::default()).await {
        Ok(_) => return Ok(ch),
        Err(e) if topology == Topology::Deployed => {
            anyhow::bail!(
                "the deployment has no queue {name:?} ({e}); the harness never declares a deployment's queues"
            )
        }
        Err(_) => {}
    }
    // A failed passive declare closes its channel; declare on a fresh one.
    let ch = conn.create_channel().await?;
    contract::topology::durable_queue(&ch, name).await.with_context(|| format!("declaring queue {name}"))?;
    Ok(ch)
}
