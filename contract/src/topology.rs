//! Exchange and queue names and their declarations. A non-empty namespace prefixes every name
//! (`<ns>.audio_stream`: the implementation adds the `.`), which is how isolated copies of the
//! pipeline share one broker.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

/// Every name the pipeline uses, resolved for one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The namespace these names were built for (empty for none).
    pub namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self { namespace: namespace.to_string() }
    }

    fn n(&self, base: &str) -> String {
        if self.namespace.is_empty() { base.to_string() } else { format!("{}.{base}", self.namespace) }
    }

    /// Work queue of audio chunks (competing Algorithm A consumers).
    pub fn audio_stream(&self) -> String {
        self.n("audio_stream")
    }
    pub fn audio_stream_dlq(&self) -> String {
        self.n("audio_stream.dlq")
    }
    pub fn features_a(&self) -> String {
        self.n("features_a")
    }
    pub fn features_b(&self) -> String {
        self.n("features_b")
    }
    /// Algorithm B's shared queue on `features_a` (M instances compete on it).
    pub fn algorithm_b_queue(&self) -> String {
        self.n("features_a.algorithm_b")
    }
    /// DataWriter's queues, one per fanout.
    pub fn writer_queue_a(&self) -> String {
        self.n("features_a.data_writer")
    }
    pub fn writer_queue_b(&self) -> String {
        self.n("features_b.data_writer")
    }
    /// The direct exchange every dead letter is published to, with the DLQ's name as routing
    /// key. Each DLQ is bound to it under its own name, so an observer (the harness) can bind a
    /// queue of its own and see every dead letter without taking any away from the DLQs.
    pub fn dead_letters(&self) -> String {
        self.n("dead_letters")
    }
    /// Dead letters of the REST API's exclusive cache queues.
    pub fn rest_api_dlq(&self) -> String {
        self.n("rest_api.dlq")
    }
    /// The dead-letter queue that belongs to a durable consumer queue.
    pub fn dlq_of(queue: &str) -> String {
        format!("{queue}.dlq")
    }

    /// Every dead-letter queue, in pipeline order.
    pub fn all_dlqs(&self) -> Vec<String> {
        vec![
            self.audio_stream_dlq(),
            Self::dlq_of(&self.algorithm_b_queue()),
            Self::dlq_of(&self.writer_queue_a()),
            Self::dlq_of(&self.writer_queue_b()),
            self.rest_api_dlq(),
        ]
    }

    /// Every durable queue, for clean-up of a namespace.
    pub fn all_queues(&self) -> Vec<String> {
        let mut v = vec![self.audio_stream(), self.audio_stream_dlq(), self.rest_api_dlq()];
        for q in [self.algorithm_b_queue(), self.writer_queue_a(), self.writer_queue_b()] {
            v.push(Self::dlq_of(&q));
            v.push(q);
        }
        v
    }
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![self.features_a(), self.features_b(), self.dead_letters()]
    }
}

/// Declares a durable queue with no arguments (idempotent).
pub async fn durable_queue(ch: &Channel, name: &str) -> lapin::Result<()> {
    ch.queue_declare(name.into(), QueueDeclareOptions::durable(), durable_queue_arguments()).await.map(|_| ())
}

/// Arguments of every durable queue: classic queues, storage version 2 (RabbitMQ ≥ 3.10), which
/// writes persistent messages with far less overhead than v1. Part of the contract: every
/// declarer of a queue must pass the same arguments.
pub fn durable_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-version".into(), lapin::types::AMQPValue::LongInt(2));
    args
}

/// Declares a durable fanout exchange (idempotent).
pub async fn fanout(ch: &Channel, name: &str) -> lapin::Result<()> {
    let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(name.into(), ExchangeKind::Fanout, opts, FieldTable::default()).await
}

/// Declares the dead-letter exchange, the durable DLQ `dlq` and its binding (routing key = its
/// own name), so dead letters published to the exchange land in it.
pub async fn dead_letter_queue(ch: &Channel, names: &Names, dlq: &str) -> lapin::Result<()> {
    let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let exchange = names.dead_letters();
    ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Direct, opts, FieldTable::default()).await?;
    durable_queue(ch, dlq).await?;
    ch.queue_bind(dlq.into(), exchange.as_str().into(), dlq.into(), QueueBindOptions::default(), FieldTable::default())
        .await
}

/// Declares a durable consumer queue, its DLQ, the exchange and the binding.
pub async fn bound_queue(ch: &Channel, names: &Names, exchange: &str, queue: &str) -> lapin::Result<()> {
    fanout(ch, exchange).await?;
    durable_queue(ch, queue).await?;
    dead_letter_queue(ch, names, &Names::dlq_of(queue)).await?;
    ch.queue_bind(queue.into(), exchange.into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await
}

/// The work queue and its DLQ.
pub async fn audio_stream(ch: &Channel, names: &Names) -> lapin::Result<()> {
    durable_queue(ch, &names.audio_stream()).await?;
    dead_letter_queue(ch, names, &names.audio_stream_dlq()).await
}

/// A private copy of everything published to fanout `exchange`: an exclusive, auto-delete,
/// server-named queue bound to it, which lives exactly as long as the connection (no stale
/// backlog after a restart, nothing left behind). Returns the queue name.
pub async fn private_fanout_queue(ch: &Channel, exchange: &str) -> lapin::Result<lapin::types::ShortString> {
    fanout(ch, exchange).await?;
    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), opts, FieldTable::default()).await?;
    let name = queue.name().clone();
    ch.queue_bind(name.clone(), exchange.into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn a_namespace_prefixes_every_name_with_a_dot() {
        let n = Names::new("qa-1");
        assert_eq!(n.audio_stream(), "qa-1.audio_stream");
        assert_eq!(n.dead_letters(), "qa-1.dead_letters");
        assert_eq!(Names::new("").features_a(), "features_a");
        assert!(n.all_dlqs().iter().all(|q| q.ends_with(".dlq") && n.all_queues().contains(q)));
    }
}
