//! SUT control (local profile, scenarios tagged @needs-sut-control): a private pipeline per
//! scenario, whose processes a step can start, stop, kill and scale without disturbing others.

use crate::params::ComponentParam;
use crate::world::World;
use anyhow::ensure;
use cucumber::{given, when};
use harness::sut::Component;

fn slug(w: &World) -> String {
    w.ns.prefix.rsplit('-').next().unwrap_or("p").to_string() + &format!("{:04x}", rand::random::<u16>())
}

#[given("a private pipeline")]
async fn private(w: &mut World) -> anyhow::Result<()> {
    let p = w.env.private_pipeline(&slug(w), &[]).await?;
    w.private = Some(p);
    Ok(())
}

#[given(expr = "a private pipeline whose REST API allows {int} requests per second with a burst of {int}")]
async fn private_rate_limited(w: &mut World, rate: u32, burst: u32) -> anyhow::Result<()> {
    let env = [
        ("APQ_API_RATE_LIMIT_PER_SEC".to_string(), rate.to_string()),
        ("APQ_API_RATE_LIMIT_BURST".to_string(), burst.to_string()),
    ];
    let mut p = w.env.private_pipeline(&slug(w), &env).await?;
    p.start(Component::RestApi, 1, &[]).await?;
    w.private = Some(p);
    Ok(())
}

#[given(expr = "{int} {component} instance(s) running")]
#[when(expr = "{int} more {component} instance(s) start(s)")]
async fn start(w: &mut World, n: usize, c: ComponentParam) -> anyhow::Result<()> {
    w.pipeline_mut()?.start(c.0, n, &[]).await.map(|_| ())
}

#[given(expr = "{int} {component} instance(s) running with prefetch {int}")]
async fn start_prefetch(w: &mut World, n: usize, c: ComponentParam, prefetch: u16) -> anyhow::Result<()> {
    let var = match c.0 {
        Component::AlgorithmA => "APQ_ALGORITHM_A_PREFETCH",
        Component::AlgorithmB => "APQ_ALGORITHM_B_PREFETCH",
        Component::DataWriter => "APQ_WRITER_PREFETCH",
        Component::RestApi => anyhow::bail!("the REST API has no prefetch"),
    };
    w.pipeline_mut()?.start(c.0, n, &[(var.to_string(), prefetch.to_string())]).await.map(|_| ())
}

#[when(expr = "{int} {component} instance(s) is/are killed")]
async fn kill(w: &mut World, n: usize, c: ComponentParam) -> anyhow::Result<()> {
    let killed = w.pipeline_mut()?.procs()?.kill(c.0, Some(n)).await?;
    ensure!(killed == n, "asked to kill {n} {} instance(s) but only {killed} were running", c.0.subcommand());
    Ok(())
}

#[when(expr = "all {component} instances are stopped")]
async fn stop_all(w: &mut World, c: ComponentParam) -> anyhow::Result<()> {
    w.pipeline_mut()?.procs()?.stop(c.0, None).await.map(|_| ())
}

#[when(expr = "{component} is scaled to {int} instance(s)")]
async fn scale(w: &mut World, c: ComponentParam, n: usize) -> anyhow::Result<()> {
    w.pipeline_mut()?.procs()?.scale(c.0, n, &[]).await
}

#[when(expr = "{component} is restarted")]
async fn restart(w: &mut World, c: ComponentParam) -> anyhow::Result<()> {
    let procs = w.pipeline_mut()?.procs()?;
    let n = procs.instances(c.0).len();
    ensure!(n > 0, "no {} instance is running, so there is nothing to restart", c.0.subcommand());
    procs.stop(c.0, None).await?;
    procs.start(c.0, n, &[]).await.map(|_| ())
}
