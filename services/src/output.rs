//! Publishing a consumer's output and settling its input (Algorithm A and B): the input is acked
//! only after the broker confirmed the output. A nack (the broker refused the message, e.g. a
//! bound queue at its `x-max-length` with `reject-publish`) is not a connection failure: the
//! output is published again after a jittered, growing pause while the input stays unacked, so
//! nothing is lost and nothing spins; the session is not torn down for it. A broker error ends
//! the session as before (the input is requeued, the supervisor reconnects).

use crate::amqp::{AmqpError, Backoff};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an output was not confirmed (its input was given back to its queue).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The channel or connection failed: the session must restart.
    #[error("publishing the output failed: {0}")]
    Publish(#[from] AmqpError),
    /// Shutdown was requested while the broker kept refusing the output.
    #[error("the broker refused the output to {exchange:?} {attempts} times until shutdown; the input was requeued")]
    RefusedUntilShutdown { exchange: String, attempts: u32 },
}

impl From<lapin::Error> for OutputError {
    fn from(e: lapin::Error) -> Self {
        OutputError::Publish(AmqpError::Broker(e))
    }
}

/// One output message.
pub struct Output<'a> {
    /// The fanout it goes to.
    pub exchange: &'a str,
    /// Its body.
    pub body: &'a [u8],
    /// Its properties (persistent, with the contract's headers).
    pub props: BasicProperties,
}

/// How nacked publishes are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The pause after the first nack.
    pub first: Duration,
    /// The longest pause between attempts.
    pub max: Duration,
    /// The fault switch `faults.ack_before_confirm`: ack the input right after the publish,
    /// before its confirm, and ignore a nack.
    pub fault_ack_before_confirm: bool,
}

impl RetryPolicy {
    pub fn for_settings(settings: &crate::config::Settings) -> Self {
        if settings.faults.ack_before_confirm {
            tracing::warn!(
                "FAULT INJECTION ACTIVE: faults.ack_before_confirm acks each input before its output is confirmed; \
                 a refused output LOSES the input. Never use in production."
            );
        }
        RetryPolicy {
            first: Duration::from_millis(settings.amqp.reconnect_min_ms),
            max: Duration::from_millis(settings.amqp.reconnect_max_ms),
            fault_ack_before_confirm: settings.faults.ack_before_confirm,
        }
    }
}

/// Publishes `output` and waits for its confirm, publishing again after each nack (see the module
/// comment); returns the number of attempts once confirmed.
pub async fn publish_until_confirmed(
    ch: &lapin::Channel,
    output: &Output<'_>,
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
) -> Result<u32, OutputError> {
    let mut backoff = Backoff::new(policy.first, policy.max);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match crate::amqp::publish_confirmed(ch, output.exchange, "", output.body, output.props.clone()).await {
            Ok(()) => return Ok(attempts),
            Err(AmqpError::Nacked(to)) => {
                let pause = backoff.next_delay();
                crate::metrics::publish_nacked(output.exchange);
                tracing::warn!(
                    to,
                    attempts,
                    retry_in_ms = pause.as_millis() as u64,
                    "the broker refused the output; retrying, the input stays unacked"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        return Err(OutputError::RefusedUntilShutdown { exchange: output.exchange.to_string(), attempts });
                    }
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Publishes `output` and settles `delivery`: acked once the output is confirmed; requeued (and
/// the error returned, ending the session) when it cannot be. Under the fault switch the input is
/// acked before the confirm is even awaited.
pub async fn publish_and_settle(
    ch: &lapin::Channel,
    delivery: &Delivery,
    output: Output<'_>,
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
) -> Result<(), OutputError> {
    if policy.fault_ack_before_confirm {
        let confirm = ch
            .basic_publish(output.exchange.into(), "".into(), BasicPublishOptions::default(), output.body, output.props)
            .await?;
        delivery.ack(BasicAckOptions::default()).await?; // the fault: before the confirm
        match confirm.await {
            Ok(c) if c.is_ack() => {}
            Ok(_) => tracing::warn!(to = output.exchange, "fault injection: output nacked, input already acked: lost"),
            Err(e) => tracing::warn!(error = %e, "fault injection: no confirm, input already acked"),
        }
        return Ok(());
    }
    match publish_until_confirmed(ch, &output, policy, shutdown).await {
        Ok(_) => {
            delivery.ack(BasicAckOptions::default()).await?;
            Ok(())
        }
        Err(e) => {
            delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.ok();
            Err(e)
        }
    }
}
