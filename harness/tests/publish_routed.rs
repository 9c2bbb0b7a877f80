//! `contract::amqp::publish_routed` against the real broker: a publish no queue takes (the queue
//! does not exist yet) is an error naming the destination, where a plain confirmed publish is
//! acked and the message silently dropped. The harness's chunk publishes and `qa-probe publish`
//! rely on it.

use contract::amqp::{PublishError, confirm_channel, json_properties, publish_confirmed, publish_routed};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::test]
async fn a_publish_to_a_missing_queue_is_an_error_and_to_a_present_one_is_not() {
    let conn = harness::amqp::connect(AMQP_URL, "publish-routed-test").await.expect("the shared broker");
    let ch = confirm_channel(&conn).await.unwrap();
    let queue = format!("apq-routed-{}", uuid::Uuid::new_v4().simple());
    let props = || json_properties("routed-1", "audio_chunk/v1", "routed");

    // Acked and gone: the silent drop publish_routed exists to catch.
    publish_confirmed(&ch, "", &queue, b"{}", props()).await.expect("a plain publish is acked");
    match publish_routed(&ch, "", &queue, b"{}", props()).await {
        Err(PublishError::Unroutable(to)) => assert!(to.ends_with(&queue), "names the destination: {to}"),
        other => panic!("expected Unroutable for a queue that does not exist, got {other:?}"),
    }

    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), opts, FieldTable::default()).await.unwrap();
    publish_routed(&ch, "", &queue, b"{}", props()).await.expect("a publish to an existing queue");
    let depth = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(depth, 1, "only the routed publish is in the queue");
    conn.close(200, "done".into()).await.ok();
}
