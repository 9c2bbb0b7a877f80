//! A nacked output (the broker refuses it: a bound queue at `x-max-length` 0 with
//! `reject-publish`) on the shared broker, in exchanges and queues of the test's own (exclusive,
//! auto-delete exchange: gone with the connection): the output is published again at a bounded pace while
//! the input stays unacked, and goes through once the refusal ends; shutdown gives the input back;
//! the `ack_before_confirm` fault acks the input and loses the output.

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use services::output::{Output, OutputError, RetryPolicy, publish_and_settle, publish_until_confirmed};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The test's own fanout, a queue bound to it that refuses every publish, and an input queue
/// holding one message; everything exclusive or auto-delete.
struct Rig {
    conn: Connection,
    ch: Channel,
    exchange: String,
    refusing: String,
    input: String,
}

impl Rig {
    async fn new() -> Rig {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.expect("shared broker");
        let ch = services::amqp::confirm_channel(&conn).await.unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("apq-test-nack-{id}.out");
        let opts = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
        ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Fanout, opts, FieldTable::default()).await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        let refusing = Rig::queue(&ch, &format!("apq-test-nack-{id}.refusing"), args).await;
        ch.queue_bind(
            refusing.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let input = Rig::queue(&ch, &format!("apq-test-nack-{id}.input"), FieldTable::default()).await;
        services::amqp::publish_confirmed(&ch, "", &input, b"input", BasicProperties::default()).await.unwrap();
        Rig { conn, ch, exchange, refusing, input }
    }

    async fn queue(ch: &Channel, name: &str, args: FieldTable) -> String {
        // Exclusive: gone with the test's connection (auto-delete would drop the input queue as
        // soon as its consumer's channel closes).
        let opts = QueueDeclareOptions { exclusive: true, ..Default::default() };
        ch.queue_declare(name.into(), opts, args).await.unwrap().name().to_string()
    }

    /// The refusal ends: the refusing queue goes, an accepting one takes its place.
    async fn accept(&self) -> String {
        // Bound first: the auto-delete exchange would go with its last binding.
        let ok = Rig::queue(&self.ch, &format!("{}.accepting", self.exchange), FieldTable::default()).await;
        let bind = QueueBindOptions::default();
        let exchange = self.exchange.as_str();
        self.ch.queue_bind(ok.as_str().into(), exchange.into(), "".into(), bind, FieldTable::default()).await.unwrap();
        self.ch.queue_delete(self.refusing.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        ok
    }

    /// Messages in `queue` (ready ones; a fresh passive declare counts them).
    async fn depth(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions { passive: true, ..Default::default() };
        ch.queue_declare(queue.into(), opts, FieldTable::default()).await.unwrap().message_count()
    }

    /// Takes the input message as a consumer would (unacked until settled).
    async fn take_input(&self) -> (Channel, lapin::message::Delivery) {
        use futures::StreamExt;
        let ch = self.conn.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                self.input.as_str().into(),
                "t".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
        (ch, d)
    }

    fn output(&self) -> Output<'_> {
        Output { exchange: &self.exchange, body: b"output", props: BasicProperties::default() }
    }
}

fn policy(fault: bool) -> RetryPolicy {
    RetryPolicy { first: Duration::from_millis(50), max: Duration::from_millis(400), fault_ack_before_confirm: fault }
}

#[tokio::test]
async fn a_refused_output_is_retried_at_a_bounded_pace_until_the_broker_takes_it() {
    let rig = Rig::new().await;
    let shutdown = CancellationToken::new();
    let (ch, output, p) = (rig.ch.clone(), rig.output(), policy(false));
    let publishing = async { publish_until_confirmed(&ch, &output, &p, &shutdown).await };
    tokio::pin!(publishing);
    // A real interval of refusals: the publish must still be pending after it.
    let refused_for = Duration::from_millis(1500);
    assert!(
        tokio::time::timeout(refused_for, &mut publishing).await.is_err(),
        "publish_until_confirmed returned while the broker refused every publish"
    );
    let accepting = rig.accept().await;
    let attempts = tokio::time::timeout(Duration::from_secs(5), publishing)
        .await
        .expect("confirmed within 5 s of the refusal ending")
        .expect("confirmed");
    // Backoff 50 ms doubling to 400 ms: about 6 attempts in 1.5 s; a spin would make thousands.
    assert!((2..=40).contains(&attempts), "{attempts} attempts in {refused_for:?} of refusals");
    assert_eq!(rig.depth(&accepting).await, 1, "the output arrived once the refusal ended");
}

#[tokio::test]
async fn shutdown_while_refused_gives_the_input_back() {
    let rig = Rig::new().await;
    let (ch, delivery) = rig.take_input().await;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        // Shutdown arrives while the output is being refused.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
    });
    let err = publish_and_settle(&rig.ch, &delivery, rig.output(), &policy(false), &shutdown).await.unwrap_err();
    assert!(matches!(err, OutputError::RefusedUntilShutdown { attempts, .. } if attempts >= 1), "{err}");
    ch.close(200, "done".into()).await.ok();
    let back = rig.ch.basic_get(rig.input.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
    assert!(back.is_some_and(|m| m.delivery.redelivered), "the input was not requeued");
}

#[tokio::test]
async fn the_ack_before_confirm_fault_acks_the_input_and_loses_the_refused_output() {
    let rig = Rig::new().await;
    let (ch, delivery) = rig.take_input().await;
    let shutdown = CancellationToken::new();
    publish_and_settle(&rig.ch, &delivery, rig.output(), &policy(true), &shutdown)
        .await
        .expect("the fault reports no error");
    ch.close(200, "done".into()).await.ok();
    assert_eq!(rig.depth(&rig.input).await, 0, "the input was acked although its output was refused");
    assert_eq!(rig.depth(&rig.refusing).await, 0);
}
