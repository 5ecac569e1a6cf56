//! The data migration from `user.balance` to `user_balance`, for real: a
//! database at the legacy step, filled with legacy users, migrated up, used,
//! migrated down and up again, losing nothing.

use anyhow::{Context, ensure};
use credit_server::entity::user_balance;
use integration_tests::{TestDb, TestServer, api, database_tests, invariants};
use migration::{LEGACY_SCHEMA_STEPS, Migrator, MigratorTrait, SchemaManager};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, Value};

database_tests!(legacy_balances_survive_up_down_up);

/// Legacy users and their `user.balance` (NULL for `None`).
const LEGACY: [(&str, Option<i64>); 5] = [
    ("zero", Some(0)),
    ("some", Some(1234)),
    ("large", Some(4_000_000_000_000_000_000)),
    ("null", None),
    ("with-log", Some(300)),
];

fn user_table(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::MySql => "`user`",
        _ => "\"user\"",
    }
}

fn placeholders(db: &DatabaseConnection, n: usize) -> String {
    (1..=n)
        .map(|i| match db.get_database_backend() {
            DbBackend::Postgres => format!("${i}"),
            _ => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn exec(db: &DatabaseConnection, sql: String, values: Vec<Value>) -> anyhow::Result<()> {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        values,
    ))
    .await?;
    Ok(())
}

async fn fill_legacy(db: &DatabaseConnection) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    for (id, balance) in LEGACY {
        let sql = format!(
            "INSERT INTO {} (id, email, name, balance, created_at, updated_at) VALUES ({})",
            user_table(db),
            placeholders(db, 6)
        );
        let values = vec![
            id.into(),
            format!("{id}@legacy.example").into(),
            "Legacy".into(),
            balance.into(),
            now.into(),
            now.into(),
        ];
        exec(db, sql, values).await?;
    }
    // A legacy user whose balance the old log explains: +500 then -200.
    for (seq, (kind, amount, running)) in [("TOP_UP", 500i64, 500i64), ("USAGE", -200, 300)]
        .into_iter()
        .enumerate()
    {
        let sql = format!(
            "INSERT INTO credit_transaction (id, user_id, sequence, type, amount, running_balance, idempotency_key, fingerprint, refunded_amount, created_at) VALUES ({})",
            placeholders(db, 10)
        );
        let values = vec![
            uuid::Uuid::now_v7().to_string().into(),
            "with-log".into(),
            (seq as i64 + 1).into(),
            kind.into(),
            amount.into(),
            running.into(),
            format!("legacy-{seq}").into(),
            "legacy".into(),
            0i64.into(),
            now.into(),
        ];
        exec(db, sql, values).await?;
    }
    Ok(())
}

async fn legacy_column(db: &DatabaseConnection) -> anyhow::Result<Vec<(String, Option<i64>)>> {
    let sql = format!("SELECT id, balance FROM {} ORDER BY id", user_table(db));
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String>("", "id")?,
                r.try_get::<Option<i64>>("", "balance")?,
            ))
        })
        .collect()
}

async fn check_balances(db: &DatabaseConnection, expected: &[(&str, i64)]) -> anyhow::Result<()> {
    let rows = user_balance::Entity::find().all(db).await?;
    ensure!(
        rows.len() == expected.len(),
        "{} user_balance rows for {} users",
        rows.len(),
        expected.len()
    );
    for (id, balance) in expected {
        let row = rows
            .iter()
            .find(|r| r.user_id == *id)
            .with_context(|| format!("no row for {id}"))?;
        ensure!(
            row.balance == *balance,
            "{id}: {} != {balance}",
            row.balance
        );
    }
    Ok(())
}

async fn legacy_balances_survive_up_down_up(test_db: &TestDb) -> anyhow::Result<()> {
    let db = credit_server::db::connect(&test_db.url, &Default::default()).await?;
    Migrator::up(&db, Some(LEGACY_SCHEMA_STEPS)).await?;
    ensure!(
        SchemaManager::new(&db)
            .has_column("user", "balance")
            .await?,
        "legacy schema has user.balance"
    );
    fill_legacy(&db).await?;

    Migrator::up(&db, None).await?;
    ensure!(
        !SchemaManager::new(&db)
            .has_column("user", "balance")
            .await?,
        "user.balance is dropped"
    );
    let migrated: Vec<(&str, i64)> = LEGACY.iter().map(|(id, b)| (*id, b.unwrap_or(0))).collect();
    check_balances(&db, &migrated).await?;
    let with_log = user_balance::Entity::find_by_id("with-log".to_owned())
        .one(&db)
        .await?
        .context("row")?;
    ensure!(
        with_log.last_sequence == 2 && with_log.opening_balance == 0,
        "the legacy log continues: {with_log:?}"
    );

    // The service serves the migrated balances and continues each ledger.
    let server = TestServer::start(&test_db.url).await?;
    let mut c = server.client().await?;
    for (id, balance) in &migrated {
        ensure!(api::balance(&mut c, id).await? == *balance, "{id}");
    }
    let top_up = api::top_up(&mut c, "with-log", 10)
        .await?
        .transaction
        .unwrap_or_default();
    ensure!(
        top_up.sequence == 3 && top_up.running_balance == 310,
        "{top_up:?}"
    );
    api::spend(&mut c, "large", 1).await?;
    for (id, _) in &migrated {
        invariants::check_user(&server, id).await?;
    }
    server.stop().await;

    // Down restores user.balance from user_balance, including new activity.
    let after: Vec<(&str, i64)> = migrated
        .iter()
        .map(|(id, b)| match *id {
            "with-log" => (*id, 310),
            "large" => (*id, b - 1),
            _ => (*id, *b),
        })
        .collect();
    // Step 5 down: holds go, every transaction and balance stays.
    let transactions = ctx_count(&db).await?;
    let schema = SchemaManager::new(&db);
    ensure!(schema.has_table("credit_hold").await?);
    Migrator::down(&db, Some(1)).await?;
    ensure!(!schema.has_table("credit_hold").await?);
    ensure!(!schema.has_column("user_balance", "held").await?);
    ensure!(!schema.has_column("credit_transaction", "hold_id").await?);
    ensure!(ctx_count(&db).await? == transactions);
    // Step 4 down: the audit columns go, every transaction stays.
    ensure!(
        schema
            .has_column("credit_transaction", "created_by")
            .await?
    );
    Migrator::down(&db, Some(1)).await?;
    ensure!(
        !schema
            .has_column("credit_transaction", "created_by")
            .await?
    );
    ensure!(
        !schema
            .has_column("credit_transaction", "created_by_subject")
            .await?
    );
    ensure!(ctx_count(&db).await? == transactions);
    // Step 3 down: the legacy column comes back with the balances.
    Migrator::down(&db, Some(1)).await?;
    let mut restored = legacy_column(&db).await?;
    restored.sort();
    let mut want: Vec<(String, Option<i64>)> = after
        .iter()
        .map(|(id, b)| (id.to_string(), Some(*b)))
        .collect();
    want.sort();
    ensure!(restored == want, "restored {restored:?}, want {want:?}");
    Migrator::down(&db, Some(1)).await?;
    ensure!(!SchemaManager::new(&db).has_table("user_balance").await?);

    // And up again: the same balances, the same continuation.
    Migrator::up(&db, None).await?;
    check_balances(&db, &after).await?;
    let with_log = user_balance::Entity::find_by_id("with-log".to_owned())
        .one(&db)
        .await?
        .context("row")?;
    ensure!(
        with_log.last_sequence == 3 && with_log.opening_balance == 0,
        "{with_log:?}"
    );
    db.close().await?;
    Ok(())
}

/// Rows in `credit_transaction`, counted without the entity (whose columns
/// a down migration may have removed).
async fn ctx_count(db: &DatabaseConnection) -> anyhow::Result<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM credit_transaction",
        ))
        .await?
        .context("count row")?;
    Ok(row.try_get::<i64>("", "n")?)
}
