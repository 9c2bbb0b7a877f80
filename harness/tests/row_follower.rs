//! The load runner's row follower against a real PostgreSQL: rows committed out of id order (two
//! writer connections) are still reported, once each.

use harness::sql::{Db, create_database, drop_database};
use uuid::Uuid;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn insert(c: &tokio_postgres::Client, source: Uuid, ty: &str) {
    c.execute(
        "INSERT INTO features (message_id, feature_type, sensor_id, source_message_id, sequence, captured_at, processed_by, features)
         VALUES ($1, $2, 'follow', $3, 0, now(), 'test', '{}'::jsonb)",
        &[&Uuid::new_v4(), &ty, &source],
    )
    .await
    .expect("insert");
}

#[tokio::test]
async fn rows_committed_out_of_id_order_are_reported_once() {
    let name = format!("apq_follow_{:08x}", rand::random::<u32>());
    create_database(ADMIN, &name).await.expect("scratch database");
    let url = harness::env::with_database(ADMIN, &name).unwrap();
    let outcome = async {
        let db = Db::connect(&url).await?;
        for m in contract::sql::MIGRATIONS {
            db.client().batch_execute(m.sql).await?;
        }
        let mut follower = db.follow_rows().await?;
        let (first, second) = (Db::connect(&url).await?, Db::connect(&url).await?);
        let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
        // The first transaction takes the lower id but commits last.
        first.client().batch_execute("BEGIN").await?;
        insert(first.client(), early, "A").await;
        insert(second.client(), late, "A").await;
        let seen: Vec<Uuid> = follower.poll().await?.iter().map(|r| r.source_message_id).collect();
        anyhow::ensure!(seen == vec![late], "before the first commits: {seen:?}");
        first.client().batch_execute("COMMIT").await?;
        let seen: Vec<Uuid> = follower.poll().await?.iter().map(|r| r.source_message_id).collect();
        anyhow::ensure!(seen == vec![early], "after it commits, the lower id is reported: {seen:?}");
        let seen = follower.poll().await?;
        anyhow::ensure!(seen.is_empty(), "nothing twice: {seen:?}");
        // The columns of contract 1.4: inserted_at by default, received_at not given here.
        insert(second.client(), Uuid::new_v4(), "B").await;
        let rows = follower.poll().await?;
        anyhow::ensure!(rows.len() == 1 && rows[0].inserted_at.is_some() && rows[0].received_at.is_none(), "{rows:?}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    drop_database(ADMIN, &name).await.ok();
    outcome.unwrap();
}
