//! The data migrations, for real. From `user.balance` to `user_balance`: a
//! database at the legacy step, filled with legacy users, migrated up, used,
//! migrated down and up again, losing nothing. From balances to lots: a
//! database at step 5 with balances and holds, migrated to lots, down and up
//! again.

use std::collections::HashMap;

use anyhow::{Context, ensure};
use credit_server::entity::{credit_allocation, credit_hold, credit_lot, user_balance};
use integration_tests::{TestDb, TestServer, api, database_tests, invariants};
use migration::{LEGACY_SCHEMA_STEPS, Migrator, MigratorTrait, SchemaManager};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, Value};
use serde_json::json;

database_tests!(
    legacy_balances_survive_up_down_up,
    balances_become_lots_up_down_up
);

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
    // Step 7 down: the sweeper's indexes go, the lots stay.
    let transactions = ctx_count(&db).await?;
    let schema = SchemaManager::new(&db);
    down_relay_cursor(&db, &schema).await?;
    down_balance_alerts(&db, &schema).await?;
    down_change_feed(&db, &schema).await?;
    down_expiry_indexes(&db, &schema).await?;
    // Step 6 down: lots go, every transaction and balance stays.
    ensure!(schema.has_table("credit_lot").await?);
    Migrator::down(&db, Some(1)).await?;
    ensure!(!schema.has_table("credit_lot").await?);
    ensure!(!schema.has_table("credit_allocation").await?);
    ensure!(ctx_count(&db).await? == transactions);
    // Step 5 down: holds go, every transaction and balance stays.
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

/// The steps before lots (step 6).
const PRE_LOTS_STEPS: u32 = 5;

/// A user at step 5: its balance, held credits and last sequence.
struct Seed {
    id: String,
    balance: i64,
    held: i64,
    last_sequence: i64,
}

impl Seed {
    fn new(id: &str, balance: i64, held: i64, last_sequence: i64) -> Seed {
        Seed {
            id: id.to_owned(),
            balance,
            held,
            last_sequence,
        }
    }
}

/// A hold at step 5, and the credits its migration earmarks (`None`: the
/// earmarks stay NULL; `Some(0)`: `[]`).
struct SeedHold {
    id: &'static str,
    user_id: &'static str,
    amount: i64,
    state: &'static str,
    /// Seconds before the seed time.
    age: i64,
    earmarked: Option<i64>,
}

/// Users spanning more than one batch of the backfill (500 users), with
/// balances 0 to 3 and no holds but the last one's.
const BULK_USERS: i64 = 1200;

fn seeds() -> Vec<Seed> {
    let mut seeds = vec![
        Seed::new("zero", 0, 0, 0),
        // Held more than the balance: the lot holds only the balance.
        Seed::new("rich", 250, 300, 2),
        Seed::new("owing", -40, 10, 2),
        Seed::new("plain", 70, 0, 1),
        // Held exactly the balance by its first hold: the second gets none.
        Seed::new("tight", 50, 80, 1),
    ];
    for i in 0..BULK_USERS {
        let held = if i == BULK_USERS - 1 { 1 } else { 0 };
        seeds.push(Seed::new(&format!("bulk-{i:04}"), i % 4, held, i));
    }
    seeds
}

fn seed_holds() -> Vec<SeedHold> {
    let hold = |id, user_id, amount, state, age, earmarked| SeedHold {
        id,
        user_id,
        amount,
        state,
        age,
        earmarked,
    };
    vec![
        // rich: taken in created_at order (not id order): 100, then the
        // 150 left of the lot's 250 for the hold of 200.
        hold("hold-b", "rich", 100, "ACTIVE", 30, Some(100)),
        hold("hold-a", "rich", 200, "ACTIVE", 20, Some(150)),
        hold("hold-c", "rich", 50, "CAPTURED", 40, None),
        hold("hold-d", "owing", 10, "ACTIVE", 10, Some(0)),
        hold("hold-e", "zero", 5, "RELEASED", 10, None),
        hold("hold-f", "tight", 50, "ACTIVE", 20, Some(50)),
        hold("hold-g", "tight", 30, "ACTIVE", 10, Some(0)),
        hold("hold-h", "bulk-1199", 1, "ACTIVE", 10, Some(1)),
    ]
}

/// Inserts `rows` into `table`, many rows a statement.
async fn insert_rows(
    db: &DatabaseConnection,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(100) {
        let mut n = 0;
        let tuples: Vec<String> = chunk
            .iter()
            .map(|row| {
                let marks: Vec<String> = row
                    .iter()
                    .map(|_| {
                        n += 1;
                        match db.get_database_backend() {
                            DbBackend::Postgres => format!("${n}"),
                            _ => "?".to_owned(),
                        }
                    })
                    .collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            columns.join(", "),
            tuples.join(", ")
        );
        exec(db, sql, chunk.concat()).await?;
    }
    Ok(())
}

/// Writes the step-5 rows: users, balances, their history and holds.
async fn fill_pre_lots(db: &DatabaseConnection, seeds: &[Seed]) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let users = seeds
        .iter()
        .map(|s| {
            vec![
                s.id.as_str().into(),
                format!("{}@lots.example", s.id).into(),
                "Lots".into(),
                now.into(),
                now.into(),
            ]
        })
        .collect();
    insert_rows(
        db,
        user_table(db),
        &["id", "email", "name", "created_at", "updated_at"],
        users,
    )
    .await?;
    let balances = seeds
        .iter()
        .map(|s| {
            vec![
                s.id.as_str().into(),
                s.balance.into(),
                0i64.into(),
                s.last_sequence.into(),
                now.into(),
                s.held.into(),
                (s.held > 0)
                    .then(|| now + chrono::Duration::hours(1))
                    .into(),
                if s.held > 0 { 2i64 } else { 0 }.into(),
            ]
        })
        .collect();
    insert_rows(
        db,
        "user_balance",
        &[
            "user_id",
            "balance",
            "opening_balance",
            "last_sequence",
            "updated_at",
            "held",
            "holds_expire_at",
            "hold_count",
        ],
        balances,
    )
    .await?;
    // The history that explains the named users' balances.
    let history: [(&str, &[(&str, i64)]); 4] = [
        ("rich", &[("TOP_UP", 400), ("USAGE", -150)]),
        ("owing", &[("TOP_UP", 60), ("USAGE", -100)]),
        ("plain", &[("TOP_UP", 70)]),
        ("tight", &[("TOP_UP", 50)]),
    ];
    let mut transactions = Vec::new();
    for (user, rows) in history {
        let mut running = 0;
        for (seq, (kind, amount)) in rows.iter().enumerate() {
            running += amount;
            transactions.push(vec![
                uuid::Uuid::now_v7().to_string().into(),
                user.into(),
                (seq as i64 + 1).into(),
                (*kind).into(),
                (*amount).into(),
                running.into(),
                format!("{user}-{seq}").into(),
                "seed".into(),
                0i64.into(),
                now.into(),
            ]);
        }
    }
    insert_rows(
        db,
        "credit_transaction",
        &[
            "id",
            "user_id",
            "sequence",
            "type",
            "amount",
            "running_balance",
            "idempotency_key",
            "fingerprint",
            "refunded_amount",
            "created_at",
        ],
        transactions,
    )
    .await?;
    let holds = seed_holds()
        .iter()
        .map(|h| {
            vec![
                h.id.into(),
                h.user_id.into(),
                h.amount.into(),
                h.state.into(),
                (now - chrono::Duration::seconds(h.age)).into(),
                (now + chrono::Duration::hours(1)).into(),
                format!("reserve-{}", h.id).into(),
                "seed".into(),
                0i64.into(),
                0i64.into(),
            ]
        })
        .collect();
    insert_rows(
        db,
        "credit_hold",
        &[
            "id",
            "user_id",
            "amount",
            "state",
            "created_at",
            "expire_time",
            "idempotency_key",
            "fingerprint",
            "reserve_balance",
            "reserve_available",
        ],
        holds,
    )
    .await
}

/// Every user_balance row's (balance, held, last_sequence), read without
/// the entity (whose columns a down migration removes).
async fn raw_balances(db: &DatabaseConnection) -> anyhow::Result<Vec<(String, i64, i64, i64)>> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT user_id, balance, held, last_sequence FROM user_balance ORDER BY user_id",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String>("", "user_id")?,
                r.try_get::<i64>("", "balance")?,
                r.try_get::<i64>("", "held")?,
                r.try_get::<i64>("", "last_sequence")?,
            ))
        })
        .collect()
}

/// Checks what step 6 made of the seeds: one PAID lot per positive
/// balance, the deficits, the sequence lots began at, and the earmarks.
async fn check_lots(db: &DatabaseConnection, seeds: &[Seed]) -> anyhow::Result<()> {
    let lots = credit_lot::Entity::find().all(db).await?;
    let mut lot_of: HashMap<&str, &credit_lot::Model> = HashMap::new();
    for lot in &lots {
        ensure!(
            lot_of.insert(lot.user_id.as_str(), lot).is_none(),
            "two lots for {}",
            lot.user_id
        );
    }
    let balances: HashMap<String, user_balance::Model> = user_balance::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|b| (b.user_id.clone(), b))
        .collect();
    ensure!(balances.len() == seeds.len(), "{} balances", balances.len());
    for seed in seeds {
        let id = seed.id.as_str();
        match lot_of.get(id) {
            Some(lot) => {
                ensure!(seed.balance > 0, "{id} has a lot: {lot:?}");
                let version = uuid::Uuid::parse_str(&lot.id)?.get_version_num();
                ensure!(
                    lot.category == "PAID"
                        && lot.priority == 100
                        && lot.granted_amount == seed.balance
                        && lot.remaining == seed.balance
                        && lot.held == seed.held.min(seed.balance)
                        && lot.returned_amount == 0
                        && lot.expired_amount == 0
                        && lot.expire_time.is_none()
                        && lot.source_transaction_id.is_none()
                        && version == 7,
                    "{id}: {lot:?}"
                );
            }
            None => ensure!(seed.balance <= 0, "no lot for {id}"),
        }
        let row = balances
            .get(id)
            .with_context(|| format!("no balance {id}"))?;
        ensure!(
            row.balance == seed.balance
                && row.held == seed.held
                && row.last_sequence == seed.last_sequence
                && row.lots_since_sequence == seed.last_sequence
                && row.deficit == (-seed.balance).max(0)
                && row.promotional == 0
                && row.lots_expire_at.is_none(),
            "{id}: {row:?}"
        );
        // balance == sum(lot remaining) - deficit
        let remaining = lot_of.get(id).map_or(0, |lot| lot.remaining);
        ensure!(row.balance == remaining - row.deficit, "{id}: {row:?}");
    }
    ensure!(lots.len() == lot_of.len());
    ensure!(
        credit_allocation::Entity::find().all(db).await?.is_empty(),
        "the backfill writes no allocations"
    );

    let holds: HashMap<String, credit_hold::Model> = credit_hold::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|h| (h.id.clone(), h))
        .collect();
    let expected = seed_holds();
    ensure!(holds.len() == expected.len(), "{} holds", holds.len());
    for want in expected {
        let hold = holds.get(want.id).context(want.id)?;
        let earmarks: Option<serde_json::Value> = hold
            .earmarks
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .with_context(|| format!("{}: {:?}", want.id, hold.earmarks))?;
        let expected = want.earmarked.map(|amount| match amount {
            0 => json!([]),
            _ => json!([{"lot_id": lot_of[want.user_id].id, "amount": amount}]),
        });
        ensure!(
            earmarks == expected,
            "{}: earmarks {earmarks:?}, want {expected:?}",
            want.id
        );
    }
    Ok(())
}

async fn balances_become_lots_up_down_up(test_db: &TestDb) -> anyhow::Result<()> {
    let db = credit_server::db::connect(&test_db.url, &Default::default()).await?;
    Migrator::up(&db, Some(PRE_LOTS_STEPS)).await?;
    let schema = SchemaManager::new(&db);
    ensure!(!schema.has_table("credit_lot").await?, "step 5 has no lots");
    let seeds = seeds();
    fill_pre_lots(&db, &seeds).await?;
    let before = raw_balances(&db).await?;
    let transactions = ctx_count(&db).await?;

    Migrator::up(&db, None).await?;
    check_lots(&db, &seeds).await?;
    // Step 8 numbered the whole history, user by user in sequence order.
    {
        use credit_server::entity::credit_transaction as tx;
        use sea_orm::QueryOrder;
        let positions: Vec<Option<i64>> = tx::Entity::find()
            .order_by_asc(tx::Column::UserId)
            .order_by_asc(tx::Column::Sequence)
            .all(&db)
            .await?
            .into_iter()
            .map(|r| r.feed_position)
            .collect();
        let expected: Vec<Option<i64>> = (1..=positions.len() as i64).map(Some).collect();
        ensure!(
            positions == expected,
            "feed positions after step 8: {positions:?}"
        );
    }

    // Down: the sweeper's indexes, then the lots, allocations and new
    // columns go; the balances, holds and transactions stay.
    down_relay_cursor(&db, &schema).await?;
    down_balance_alerts(&db, &schema).await?;
    down_change_feed(&db, &schema).await?;
    down_expiry_indexes(&db, &schema).await?;
    Migrator::down(&db, Some(1)).await?;
    ensure!(!schema.has_table("credit_lot").await?);
    ensure!(!schema.has_table("credit_allocation").await?);
    for column in [
        "promotional",
        "deficit",
        "lots_expire_at",
        "lots_since_sequence",
    ] {
        ensure!(
            !schema.has_column("user_balance", column).await?,
            "user_balance.{column} is dropped"
        );
    }
    ensure!(!schema.has_column("credit_hold", "earmarks").await?);
    ensure!(raw_balances(&db).await? == before, "balances unchanged");
    ensure!(ctx_count(&db).await? == transactions);
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM credit_hold",
        ))
        .await?
        .context("count row")?;
    ensure!(row.try_get::<i64>("", "n")? == seed_holds().len() as i64);

    // And up again: the same lots (with new ids) and earmarks.
    Migrator::up(&db, None).await?;
    check_lots(&db, &seeds).await?;
    ensure!(raw_balances(&db).await? == before, "balances unchanged");
    db.close().await?;
    Ok(())
}

/// Step 10 made the relays' cursor table; its down drops it.
async fn down_relay_cursor(
    db: &sea_orm::DatabaseConnection,
    schema: &SchemaManager<'_>,
) -> anyhow::Result<()> {
    ensure!(
        schema.has_table("relay_cursor").await?,
        "step 10 made relay_cursor"
    );
    Migrator::down(db, Some(1)).await?;
    ensure!(
        !schema.has_table("relay_cursor").await?,
        "relay_cursor left behind"
    );
    Ok(())
}

/// Step 9 made the alert tables and every user's alert count (0); its down
/// takes them away again.
async fn down_balance_alerts(
    db: &sea_orm::DatabaseConnection,
    schema: &SchemaManager<'_>,
) -> anyhow::Result<()> {
    for table in ["balance_alert", "alert_event"] {
        ensure!(schema.has_table(table).await?, "step 9 made {table}");
    }
    use credit_server::entity::user_balance;
    let counts: Vec<i64> = user_balance::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|b| b.alert_count)
        .collect();
    ensure!(counts.iter().all(|c| *c == 0), "alert counts {counts:?}");
    Migrator::down(db, Some(1)).await?;
    for table in ["balance_alert", "alert_event"] {
        ensure!(!schema.has_table(table).await?, "{table} left behind");
    }
    ensure!(!schema.has_column("user_balance", "alert_count").await?);
    Ok(())
}

/// Step 7 down: the indexes on the expiry bounds go, nothing else.
/// Step 8 numbered every existing transaction for the change feed, user by
/// user in sequence order, and its down takes the positions and the
/// sequencer away again.
async fn down_change_feed(
    db: &sea_orm::DatabaseConnection,
    schema: &SchemaManager<'_>,
) -> anyhow::Result<()> {
    use credit_server::entity::credit_transaction as tx;
    use sea_orm::QueryOrder;
    let rows = tx::Entity::find()
        .order_by_asc(tx::Column::UserId)
        .order_by_asc(tx::Column::Sequence)
        .all(db)
        .await?;
    // Rows that existed at step 8 are numbered; a server that ran since
    // numbered most of its own (a stop may leave the last ones to the next
    // start). Per user the positions rise with the sequence.
    let numbered: Vec<i64> = rows.iter().filter_map(|r| r.feed_position).collect();
    ensure!(!numbered.is_empty(), "no transaction has a feed position");
    let mut unique = numbered.clone();
    unique.sort_unstable();
    unique.dedup();
    ensure!(
        unique.len() == numbered.len(),
        "a feed position given twice"
    );
    for pair in rows.windows(2) {
        if let ([a, b], (Some(pa), Some(pb))) =
            (pair, (pair[0].feed_position, pair[1].feed_position))
            && a.user_id == b.user_id
        {
            ensure!(
                pa < pb,
                "{}: sequence {} at {pa}, {} at {pb}",
                a.user_id,
                a.sequence,
                b.sequence
            );
        }
    }
    let head = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT last_position FROM feed_sequencer WHERE id = 1",
        ))
        .await?
        .context("the sequencer's row")?
        .try_get::<i64>("", "last_position")?;
    ensure!(
        head == *unique.last().unwrap_or(&0),
        "the feed's head {head} is not the highest position"
    );
    Migrator::down(db, Some(1)).await?;
    ensure!(!schema.has_table("feed_sequencer").await?);
    ensure!(
        !schema
            .has_column("credit_transaction", "feed_position")
            .await?
    );
    Ok(())
}

async fn down_expiry_indexes(
    db: &sea_orm::DatabaseConnection,
    schema: &SchemaManager<'_>,
) -> anyhow::Result<()> {
    const INDEXES: [&str; 2] = [
        "idx_user_balance_lots_expire_at",
        "idx_user_balance_holds_expire_at",
    ];
    for index in INDEXES {
        ensure!(schema.has_index("user_balance", index).await?, "{index}");
    }
    Migrator::down(db, Some(1)).await?;
    for index in INDEXES {
        ensure!(!schema.has_index("user_balance", index).await?, "{index}");
    }
    ensure!(schema.has_table("credit_lot").await?, "step 6 stays");
    Ok(())
}
