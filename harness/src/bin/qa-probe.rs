//! Small probes of a deployment for scripted checks (`scripts/external-check.sh`), speaking the
//! contract only. Addresses come from `QA_AMQP_URL` and `QA_DATABASE_URL`.
//!
//! ```text
//! qa-probe publish <queue> <message id> <body>   publish one persistent message to a queue (default exchange)
//! qa-probe depth <queue>                         print the queue's ready-message count (passive declare)
//! qa-probe holds <queue> <message id>            exit 0 if the queue holds that message (read, then requeued)
//! qa-probe rows-outside <sensor prefix>          print the number of rows whose sensor id lacks the prefix
//! ```

use anyhow::{Context as _, bail};
use lapin::options::{BasicGetOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["publish", queue, id, body] => {
            let conn = harness::amqp::connect(&var("QA_AMQP_URL")?, "qa-probe").await?;
            let ch = contract::amqp::confirm_channel(&conn).await?;
            let props = contract::amqp::json_properties(id, "audio_chunk/v1", "qa-probe");
            contract::amqp::publish_routed(&ch, "", queue, body.as_bytes(), props)
                .await
                .with_context(|| format!("publishing {id} to {queue}"))?;
        }
        ["depth", queue] => {
            let conn = harness::amqp::connect(&var("QA_AMQP_URL")?, "qa-probe").await?;
            let ch = conn.create_channel().await?;
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            let q = ch.queue_declare((*queue).into(), passive, FieldTable::default()).await?;
            println!("{}", q.message_count());
        }
        ["holds", queue, id] => {
            let conn = harness::amqp::connect(&var("QA_AMQP_URL")?, "qa-probe").await?;
            let ch = conn.create_channel().await?;
            // Every message is taken without ack and put back with reject(requeue) after the
            // look, so the queue keeps all it had (they only come back marked redelivered).
            let mut found = false;
            let mut taken = Vec::new();
            let mut ids = Vec::new();
            while let Some(m) = ch
                .basic_get((*queue).into(), BasicGetOptions { no_ack: false })
                .await
                .with_context(|| format!("reading {queue} (message {} of it)", taken.len() + 1))?
            {
                let mid = m.delivery.properties.message_id().as_ref().map(|m| m.to_string());
                found |= mid.as_deref() == Some(*id);
                ids.push(mid.unwrap_or_else(|| "(no message id)".into()));
                taken.push(m.delivery.delivery_tag);
            }
            for tag in taken {
                ch.basic_reject(tag, BasicRejectOptions { requeue: true }).await.context("putting a message back")?;
            }
            if !found {
                // What was there instead, so a failed check says more than "not found".
                let shown = ids.iter().take(12).map(String::as_str).collect::<Vec<_>>().join(", ");
                bail!("{queue} does not hold message {id}: it held {} message(s): {shown}", ids.len());
            }
            println!("{queue} holds {id} (among {} message(s))", ids.len());
        }
        ["rows-outside", prefix] => {
            let db = harness::sql::Db::connect(&var("QA_DATABASE_URL")?).await?;
            println!("{}", db.count_outside_sensor_prefix(prefix).await?);
        }
        _ => bail!(
            "usage: qa-probe publish <queue> <id> <body> | depth <queue> | holds <queue> <id> | rows-outside <prefix>"
        ),
    }
    Ok(())
}
