//! Removing what a run declared on a shared broker.

use contract::topology::Names;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

/// Deletes every queue and exchange of `names` (errors are ignored: some may never have existed).
pub async fn delete_namespace(conn: &lapin::Connection, names: &Names) {
    for q in names.all_queues() {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
            let _ = ch.close(200, "cleanup".into()).await;
        }
    }
    for x in names.all_exchanges() {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
            let _ = ch.close(200, "cleanup".into()).await;
        }
    }
}
