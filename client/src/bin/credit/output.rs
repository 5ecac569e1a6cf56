//! How results are printed: aligned tables for people, JSON for scripts.

use chrono::{DateTime, SecondsFormat, Utc};
use credit_client::{
    AlertEventPage, Allocation, Balance, BalanceAlert, FeedMessage, Hold, HoldPage, HoldReceipt,
    LedgerReport, Lot, LotPage, Page, Receipt, Transaction, User,
};
use serde::Serialize;

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> Result<(), serde_json::Error> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `value` as one line of JSON, for a stream of them (JSON Lines).
pub fn json_line<T: Serialize>(value: &T) -> Result<(), serde_json::Error> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// One transaction of the feed as one line, with the cursor after it.
pub fn feed_line(m: &FeedMessage) {
    if let Some(e) = &m.alert_event {
        println!(
            "{}  {}  seq {}  ALERT below {}  {} -> {}  event {}  cursor {}",
            time(e.created_at),
            e.user_id,
            e.sequence,
            e.threshold,
            e.balance_before,
            e.balance_after,
            e.event_id,
            m.cursor
        );
    }
    if let Some(t) = &m.transaction {
        println!(
            "{}  {}  seq {}  {}  {}  balance {}  {}  cursor {}",
            time(t.created_at),
            t.user_id,
            t.sequence,
            t.kind,
            signed(t.amount),
            t.running_balance,
            t.transaction_id,
            m.cursor
        );
    }
}

/// An alert as `field  value` lines.
pub fn alert(a: &BalanceAlert) {
    let mut rows = vec![
        ("alert", a.alert_id.clone()),
        ("user", a.user_id.clone()),
        ("threshold", a.threshold.to_string()),
        ("armed", if a.armed { "yes" } else { "no" }.to_owned()),
        ("created", time(a.created_at)),
    ];
    if let Some(at) = a.deleted_at {
        rows.push(("deleted", time(at)));
    }
    fields(&rows);
}

/// Alert events as a table, newest first, then the token to continue.
pub fn alert_events(page: &AlertEventPage) {
    let mut table = Table::new([
        "SEQ",
        "CREATED",
        "THRESHOLD",
        "BEFORE",
        "AFTER",
        "EVENT",
        "TRANSACTION",
    ]);
    for e in &page.events {
        table.row([
            e.sequence.to_string(),
            time(e.created_at),
            e.threshold.to_string(),
            e.balance_before.to_string(),
            e.balance_after.to_string(),
            e.event_id.clone(),
            e.transaction_id.clone(),
        ]);
    }
    table.print(&[0, 2, 3, 4]);
    if page.events.is_empty() {
        println!("(no alert events)");
    }
    if let Some(token) = &page.next_page_token {
        println!("(more events: continue with --page-token {token})");
    }
}

/// One balance of a watch as one line.
pub fn balance_line(b: &Balance) {
    println!(
        "{}  {}  balance {}  held {}  available {}  seq {}",
        time(b.updated_at),
        b.user_id,
        b.balance,
        b.held,
        b.available,
        b.last_sequence
    );
}

/// A user as `field  value` lines.
pub fn user(u: &User) {
    fields(&[
        ("user", u.user_id.clone()),
        ("email", u.email.clone()),
        ("name", u.name.clone()),
        ("created", time(u.created_at)),
    ]);
}

/// A balance as `field  value` lines; the next expiry only when credits
/// will expire.
pub fn balance(b: &Balance) {
    let mut rows = vec![
        ("user", b.user_id.clone()),
        ("balance", b.balance.to_string()),
        ("paid", b.paid.to_string()),
        ("promotional", b.promotional.to_string()),
        ("held", b.held.to_string()),
        ("available", b.available.to_string()),
    ];
    if let Some(at) = b.next_expire_time {
        rows.push(("next expiry", time(at)));
        rows.push(("expiring", b.next_expiring_amount.to_string()));
    }
    rows.push(("updated", time(b.updated_at)));
    rows.push(("last sequence", b.last_sequence.to_string()));
    let alerts: Vec<String> = b
        .alerts
        .iter()
        .map(|a| {
            format!(
                "below {} ({})",
                a.threshold,
                if a.armed { "armed" } else { "fired" }
            )
        })
        .collect();
    if !alerts.is_empty() {
        rows.push(("alerts", alerts.join(", ")));
    }
    fields(&rows);
}

/// A write's transaction, the balance after it, and the lot a top-up or
/// grant made.
pub fn receipt(r: &Receipt) {
    let mut rows = transaction_rows(&r.transaction);
    rows.push(("balance", r.balance.to_string()));
    if let Some(lot) = &r.lot {
        rows.push(("lot", lot.lot_id.clone()));
        rows.push(("category", lot.category.to_string()));
        rows.push(("priority", lot.priority.to_string()));
        rows.push(("lot expires", expiry(lot)));
    }
    fields(&rows);
}

/// One transaction as `field  value` lines.
pub fn transaction(t: &Transaction) {
    fields(&transaction_rows(t));
}

/// A transaction's fields; empty ones are left out.
fn transaction_rows(t: &Transaction) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("transaction", t.transaction_id.clone()),
        ("user", t.user_id.clone()),
        ("type", t.kind.to_string()),
        ("amount", signed(t.amount)),
        ("running balance", t.running_balance.to_string()),
        ("sequence", t.sequence.to_string()),
        ("created", time(t.created_at)),
        ("idempotency key", t.idempotency_key.clone()),
    ];
    let optional = [
        ("reason", t.reason.clone()),
        ("refund of", t.refunded_transaction_id.clone()),
        ("hold", t.hold_id.clone()),
        ("usage", t.usage.as_ref().map(usage_text)),
        (
            "metadata",
            t.metadata
                .as_ref()
                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        ),
        (
            "refunded",
            (t.refunded_amount != 0).then(|| t.refunded_amount.to_string()),
        ),
    ];
    rows.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    // One line per allocation, the field's name on the first.
    for (i, a) in t.allocations.iter().enumerate() {
        let name = if i == 0 { "allocations" } else { "" };
        rows.push((name, allocation_text(a)));
    }
    rows
}

/// `-50 lot <id>`, or `-20 deficit` for the user's deficit.
fn allocation_text(a: &Allocation) -> String {
    match &a.lot_id {
        Some(id) => format!("{} lot {id}", signed(a.amount)),
        None => format!("{} deficit", signed(a.amount)),
    }
}

/// A page of lots as a table in draw order, then the token to continue
/// with.
pub fn lots(page: &LotPage) {
    let mut table = Table::new([
        "PRIORITY",
        "CATEGORY",
        "REMAINING",
        "HELD",
        "GRANTED",
        "EXPIRES",
        "CREATED",
        "LOT",
        "SOURCE",
    ]);
    for l in &page.lots {
        table.row([
            l.priority.to_string(),
            l.category.to_string(),
            l.remaining.to_string(),
            l.held.to_string(),
            l.granted_amount.to_string(),
            expiry(l),
            time(l.created_at),
            l.lot_id.clone(),
            l.source_transaction_id.clone().unwrap_or_default(),
        ]);
    }
    table.print(&[0, 2, 3, 4]);
    if page.lots.is_empty() {
        println!("(no lots)");
    }
    if let Some(token) = &page.next_page_token {
        println!("(more lots: continue with --page-token {token})");
    }
}

/// When a lot expires: its time, or `never`.
fn expiry(l: &Lot) -> String {
    l.expire_time.map_or_else(|| "never".to_owned(), time)
}

/// One hold as `field  value` lines.
pub fn hold(h: &Hold) {
    fields(&hold_rows(h));
}

/// A reserve's, capture's or release's hold, the usage transaction a
/// capture wrote, and the balances after.
pub fn hold_receipt(r: &HoldReceipt) {
    let mut rows = hold_rows(&r.hold);
    if let Some(t) = &r.transaction {
        rows.push(("transaction", t.transaction_id.clone()));
        rows.push(("charged", signed(t.amount)));
    }
    rows.push(("balance", r.balance.to_string()));
    rows.push(("available", r.available.to_string()));
    fields(&rows);
}

/// A hold's fields; empty ones are left out.
fn hold_rows(h: &Hold) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("hold", h.hold_id.clone()),
        ("user", h.user_id.clone()),
        ("state", h.state.to_string()),
        ("amount", h.amount.to_string()),
        ("captured", h.captured_amount.to_string()),
        ("created", time(h.created_at)),
        ("expires", time(h.expire_time)),
        ("idempotency key", h.idempotency_key.clone()),
    ];
    let optional = [
        ("closed", h.closed_at.map(time)),
        ("capture transaction", h.capture_transaction_id.clone()),
        ("release reason", h.release_reason.clone()),
        ("usage", h.usage.as_ref().map(usage_text)),
        (
            "metadata",
            h.metadata
                .as_ref()
                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        ),
    ];
    rows.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)).filter(|(_, v)| !v.is_empty())),
    );
    rows
}

/// A page of holds as a table, then the token to continue with.
pub fn holds(page: &HoldPage) {
    let mut table = Table::new([
        "CREATED", "STATE", "AMOUNT", "CAPTURED", "EXPIRES", "HOLD", "DETAILS",
    ]);
    for h in &page.holds {
        let mut details: Vec<String> = Vec::new();
        if let Some(usage) = &h.usage {
            details.push(usage_text(usage));
        }
        if let Some(reason) = &h.release_reason {
            details.push(reason.clone());
        }
        details.retain(|d| !d.is_empty());
        table.row([
            time(h.created_at),
            h.state.to_string(),
            h.amount.to_string(),
            h.captured_amount.to_string(),
            time(h.expire_time),
            h.hold_id.clone(),
            details.join("; "),
        ]);
    }
    table.print(&[2, 3]);
    if page.holds.is_empty() {
        println!("(no holds)");
    }
    if let Some(token) = &page.next_page_token {
        println!("(more holds: continue with --page-token {token})");
    }
}

/// A page of transactions as a table, one per row, then the token to
/// continue with when more exist.
pub fn history(page: &Page) {
    let transactions = &page.transactions;
    let mut table = Table::new([
        "SEQ",
        "CREATED",
        "TYPE",
        "AMOUNT",
        "BALANCE",
        "TRANSACTION",
        "DETAILS",
    ]);
    for t in transactions {
        table.row([
            t.sequence.to_string(),
            time(t.created_at),
            t.kind.to_string(),
            signed(t.amount),
            t.running_balance.to_string(),
            t.transaction_id.clone(),
            details(t),
        ]);
    }
    table.print(&[0, 3, 4]);
    if transactions.is_empty() {
        println!("(no transactions)");
    }
    if let Some(token) = &page.next_page_token {
        println!("(more transactions: continue with --page-token {token})");
    }
}

/// A ledger check: the counts, then one row per violation.
pub fn ledger_report(r: &LedgerReport) {
    fields(&[
        ("clean", if r.clean { "yes" } else { "NO" }.to_owned()),
        ("users checked", r.users_checked.to_string()),
        ("transactions checked", r.transactions_checked.to_string()),
        (
            "violations",
            (r.violations.len() as i64 + r.violations_omitted).to_string(),
        ),
    ]);
    if r.violations.is_empty() {
        return;
    }
    println!();
    let mut table = Table::new(["USER", "SEQ", "KIND", "DETAIL"]);
    for v in &r.violations {
        let seq = v.sequence.map(|s| s.to_string()).unwrap_or_default();
        table.row([v.user_id.clone(), seq, v.kind.clone(), v.detail.clone()]);
    }
    table.print(&[1]);
    if r.violations_omitted > 0 {
        println!("(and {} more)", r.violations_omitted);
    }
}

/// The short description a history row ends with.
fn details(t: &Transaction) -> String {
    let mut parts = Vec::new();
    if let Some(reason) = &t.reason {
        parts.push(reason.clone());
    }
    if let Some(usage) = &t.usage {
        parts.push(usage_text(usage));
    }
    if let Some(id) = &t.refunded_transaction_id {
        parts.push(format!("refund of {id}"));
    }
    if t.refunded_amount != 0 {
        parts.push(format!("{} refunded", t.refunded_amount));
    }
    if let Some(by) = &t.created_by {
        parts.push(format!("by {by}"));
    }
    parts.retain(|p| !p.is_empty());
    parts.join("; ")
}

fn usage_text(u: &credit_client::Usage) -> String {
    [
        ("reason", &u.reason),
        ("graph_exec", &u.graph_exec_id),
        ("graph", &u.graph_id),
        ("node", &u.node_id),
        ("node_exec", &u.node_exec_id),
        ("block", &u.block_id),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
    .collect::<Vec<_>>()
    .join(" ")
}

/// `+100` / `-40`: the sign is the point of the column.
fn signed(amount: i64) -> String {
    format!("{amount:+}")
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Two aligned columns: field name, value.
fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    for (name, value) in rows {
        println!("{name:<width$}{value}");
    }
}

/// A table whose columns are as wide as their widest cell.
struct Table<const N: usize> {
    header: [String; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&str; N]) -> Self {
        Self {
            header: header.map(str::to_owned),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    /// Prints the table; the columns in `right` (numbers) are right-aligned.
    fn print(&self, right: &[usize]) {
        let mut widths = [0; N];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| match right.contains(&i) {
                    true => format!("{cell:>w$}", w = widths[i]),
                    false => format!("{cell:<w$}", w = widths[i]),
                })
                .collect();
            println!("{}", cells.join("  ").trim_end());
        }
    }
}
