//! Private RabbitMQ and PostgreSQL nodes: they start on free ports, every crash verb works, data
//! survives what it should, and nothing (directory, process) is left behind. Skipped, saying
//! why, where the server binaries are missing. Never touches the shared broker or database.

use contract::amqp::{confirm_channel, publish_confirmed};
use harness::faults::{self, PrivatePostgres, PrivateRabbit};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Duration;
use tokio::time::{Instant, timeout};

const SOON: Duration = Duration::from_secs(30);

/// Whether `pid` runs (a zombie awaiting its reaper does not count).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
}

async fn connect(url: &str) -> Connection {
    timeout(SOON, Connection::connect(url, ConnectionProperties::default()))
        .await
        .expect("AMQP connect within 30 s")
        .expect("AMQP connect")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // A poll of connection state, which has no change notification.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rabbit_survives_every_verb_and_leaves_nothing_behind() {
    if let Err(why) = faults::rabbitmq_available() {
        eprintln!("skipped: {why}");
        return;
    }
    let run_id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // A claimed run dir: if this test is killed, the next run's reap stops what it left.
    let run_dir = faults::reap::fresh_run_dir(&format!("test-{run_id}")).unwrap();
    let mut node = PrivateRabbit::start(&run_dir, &run_id).await.expect("private node starts");
    eprintln!("private RabbitMQ {} ready in {:?} at {}", node.node(), node.last_start(), node.amqp_url());
    assert_ne!(node.addr().port(), 5672, "must never be the shared broker");
    let dir = node.dir().to_path_buf();
    let groups = node.process_groups();

    // A durable queue with one persistent message.
    let conn = connect(&node.amqp_url()).await;
    let ch = confirm_channel(&conn).await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("qa-durable".into(), durable, FieldTable::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish_confirmed(&ch, "", "qa-durable", b"kept", persistent.clone()).await.unwrap();
    let depth = node.list_queues().await.unwrap();
    assert!(depth.iter().any(|q| q.name == "qa-durable" && q.ready == 1 && q.unacked == 0), "{depth:?}");

    // close_all_connections: the broker closes ours.
    node.close_all_connections("qa test").await.unwrap();
    until("the broker to close the connection", || !conn.status().connected()).await;

    // Memory alarm: a publish is not confirmed while it is on, and is once it is cleared.
    let conn = connect(&node.amqp_url()).await;
    let ch = confirm_channel(&conn).await.unwrap();
    node.set_memory_alarm(true).await.unwrap();
    let props = persistent.clone();
    let publish = tokio::spawn(async move { publish_confirmed(&ch, "", "qa-durable", b"blocked", props).await });
    // Not a synchronisation: the publish must stay unconfirmed for a while under the alarm.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!publish.is_finished(), "a publish was confirmed under a memory alarm");
    let cleared = Instant::now();
    node.set_memory_alarm(false).await.unwrap();
    timeout(SOON, publish).await.expect("confirm after the alarm cleared").unwrap().unwrap();
    eprintln!("publish confirmed {:?} after clearing the alarm", cleared.elapsed());
    drop(conn);

    // stop_app / start_app: connections drop, the node comes back.
    let conn = connect(&node.amqp_url()).await;
    let began = Instant::now();
    node.stop_app().await.unwrap();
    until("stop_app to close the connection", || !conn.status().connected()).await;
    node.start_app().await.unwrap();
    eprintln!("stop_app + start_app took {:?}", began.elapsed());
    connect(&node.amqp_url()).await;

    // SIGKILL and restart on the same data: the durable queue keeps its persistent messages.
    node.kill9().await.unwrap();
    assert!(!node.is_running());
    assert!(
        timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(node.addr())).await.is_ok_and(|r| r.is_err()),
        "AMQP still answers after kill -9"
    );
    node.start_again().await.unwrap();
    eprintln!("restart after SIGKILL ready in {:?}", node.last_start());
    let depth = node.list_queues().await.unwrap();
    assert!(depth.iter().any(|q| q.name == "qa-durable" && q.ready == 2), "lost messages across kill -9: {depth:?}");

    let groups_now = node.process_groups();
    node.stop().await.unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    std::fs::remove_dir_all(&run_dir).unwrap();
    for g in groups.iter().chain(&groups_now) {
        let left = faults::processes_in_group(*g);
        assert!(left.is_empty(), "processes left in group {g}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_postgres_crashes_recovers_and_is_removed() {
    if let Err(why) = faults::postgres_available() {
        eprintln!("skipped: {why}");
        return;
    }
    let run_dir = faults::reap::fresh_run_dir(&format!("test-pg-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let mut pg = PrivatePostgres::start(&run_dir).await.expect("private cluster starts");
    eprintln!("private PostgreSQL at {}: initdb {:?}, start {:?}", pg.url(), pg.init_time(), pg.last_start());
    assert_ne!(pg.port(), 5432, "must never be the shared server");
    let dir = pg.dir().to_path_buf();

    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    db.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await.unwrap();

    // A crash: the session dies, committed rows survive recovery.
    pg.stop_immediate().await.unwrap();
    assert!(db.query("SELECT 1", &[]).await.is_err(), "a session survived an immediate stop");
    let _ = timeout(SOON, conn).await;
    pg.start_again().await.unwrap();
    eprintln!("start after an immediate stop (crash recovery): {:?}", pg.last_start());
    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let n: i64 = db.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "a committed row was lost in crash recovery");

    pg.restart_fast().await.unwrap();
    eprintln!("fast restart: start took {:?}", pg.last_start());
    assert!(db.query("SELECT 1", &[]).await.is_err(), "a session survived a fast restart");
    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    db.query_one("SELECT count(*) FROM t", &[]).await.unwrap();

    let postmaster = pg.postmaster_pid().expect("a running server has a pid file");
    pg.stop().await.unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!alive(postmaster), "postmaster {postmaster} still runs");
    std::fs::remove_dir_all(&run_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_private_postgres_stops_and_removes_it() {
    if let Err(why) = faults::postgres_available() {
        eprintln!("skipped: {why}");
        return;
    }
    let run_dir = faults::reap::fresh_run_dir(&format!("test-pg-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let pg = PrivatePostgres::start(&run_dir).await.expect("private cluster starts");
    let (dir, postmaster) = (pg.dir().to_path_buf(), pg.postmaster_pid().expect("pid file"));
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    // pg_ctl -w returned once the postmaster exited; a poll in case its children linger.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(postmaster) {
        assert!(Instant::now() < deadline, "postmaster {postmaster} still runs after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir_all(&run_dir).unwrap();
}
