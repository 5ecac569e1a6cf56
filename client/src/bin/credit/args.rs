//! The command line: what `credit` accepts, with its help text.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use credit_client::{HoldState, LotCategory, TransactionType};
use serde_json::Value as Json;

use crate::exit::EXIT_CODES_HELP;
use crate::parse::{
    parse_duration, parse_expiry, parse_meta, parse_rfc3339, parse_server, parse_time, parse_ttl,
};

/// Talk to the credit ledger service: users, balances, writes and history.
#[derive(Debug, Parser)]
#[command(name = "credit", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The server's address: host:port (plain text; with a --tls-* flag,
    /// TLS), http://host:port or https://host:port.
    #[arg(
        long,
        env = "CREDIT_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_parser = parse_server,
        global = true
    )]
    pub server: String,

    /// Print JSON instead of a table (for scripts): the proto3 JSON mapping,
    /// and errors as one JSON object on stderr.
    #[arg(long, global = true)]
    pub json: bool,

    /// The longest the whole command may take, retries included, e.g.
    /// 500ms, 10s, 1m; past it the command exits 8 (deadline exceeded).
    #[arg(long, env = "CREDIT_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// Bearer token sent as `authorization: Bearer <token>`.
    #[arg(long, env = "CREDIT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// PEM file of the CA that signed the server's TLS certificate
    /// (default: the bundled public roots). Also read from CREDIT_CA_CERT.
    #[arg(
        long,
        visible_alias = "ca-cert",
        env = "CREDIT_TLS_CA",
        value_name = "FILE",
        global = true
    )]
    pub tls_ca: Option<PathBuf>,

    /// PEM file of the client certificate, for servers that require mutual
    /// TLS (with --tls-key).
    #[arg(
        long,
        env = "CREDIT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of the client certificate's private key (with --tls-cert).
    #[arg(
        long,
        env = "CREDIT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        global = true
    )]
    pub tls_key: Option<PathBuf>,

    /// The name the server's certificate must carry, when it is not the
    /// address's host (e.g. connecting by IP address).
    #[arg(
        long,
        env = "CREDIT_TLS_SERVER_NAME",
        value_name = "NAME",
        global = true
    )]
    pub tls_server_name: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or show a user.
    #[command(subcommand)]
    User(UserCommand),
    /// Show a user's balance.
    Balance {
        /// The user.
        user: String,
    },
    /// Add purchased credits, as a paid lot (--reason is stored as metadata
    /// "reason").
    TopUp {
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        lot: LotArgs,
    },
    /// Take credits for usage.
    Spend {
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// Give credits without payment, as a promotional lot (or a paid one
    /// with --category paid).
    Grant {
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        lot: LotArgs,
        /// The lot's category: promotional (default) or paid, for credits
        /// sold through another channel.
        #[arg(long, value_name = "CATEGORY")]
        category: Option<LotCategory>,
    },
    /// Reverse all or part of an earlier top-up, spend or grant.
    Refund {
        /// The user the transaction belongs to.
        user: String,
        /// The transaction to refund.
        transaction: String,
        /// Credits to refund (default: everything not yet refunded).
        amount: Option<i64>,
        #[command(flatten)]
        options: WriteOptions,
    },
    /// Show one transaction, with the lots it drew from or added to.
    #[command(alias = "tx")]
    Transaction {
        /// The user the transaction belongs to.
        user: String,
        /// The transaction.
        transaction: String,
    },
    /// List a user's transactions, newest first.
    History(HistoryArgs),
    /// Hold credits for work whose cost is known later: reserve, then
    /// capture the real cost or release.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// List a user's lots (credits by category, priority and expiry) in the
    /// order spends draw from them.
    Lots(LotsArgs),
    /// Low-balance alerts: an event each time a write takes the balance
    /// below a threshold (set, delete, events).
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Follow transactions as they commit, until interrupted (or --limit):
    /// one user's, or every user's (admin key) when USER is left out. It
    /// reopens by itself after a lost connection or a server restart and
    /// goes on exactly where it was. --json prints one JSON object per line,
    /// heartbeats included, each with the cursor to pass to --start-after.
    #[command(visible_alias = "watch-transactions")]
    Watch(WatchArgs),
    /// Follow a user's balance: the current value, then every change.
    WatchBalance {
        /// The user.
        user: String,
        /// Stop after this many balances.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Check the ledger's invariants for one user or all (admin key);
    /// exits 10 when any is violated.
    Verify {
        /// The user to check (default: every user).
        user: Option<String>,
    },
    /// Print a shell completion script, e.g. `credit completions bash >
    /// ~/.local/share/bash-completion/completions/credit`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
}

/// `credit user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user with a zero balance (again with the same email: no-op).
    Create {
        /// The new user's id.
        user: String,
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// The user's display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a user.
    Get {
        /// The user.
        user: String,
    },
}

/// `credit hold ...`
#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Earmark credits (at most the available balance) until captured,
    /// released or expired (--reason is stored as the usage's reason).
    Reserve {
        /// The user.
        user: String,
        /// Credits to hold, greater than 0.
        amount: i64,
        /// How long the hold lasts, e.g. 30m, 2h, 1d (default: the server's,
        /// 1h unless configured).
        #[arg(long, value_parser = parse_ttl, conflicts_with = "expires")]
        ttl: Option<Duration>,
        /// When the hold ends: an RFC 3339 time in the future.
        #[arg(long, value_parser = parse_rfc3339)]
        expires: Option<DateTime<Utc>>,
        #[command(flatten)]
        options: WriteOptions,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// Settle an active hold with the real cost: one usage transaction; the
    /// rest is released (0 releases it all).
    Capture {
        /// The user the hold belongs to.
        user: String,
        /// The hold.
        hold: String,
        /// The real cost in credits, 0 or more.
        amount: i64,
        #[command(flatten)]
        options: WriteOptions,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// Give all of an active hold back.
    Release {
        /// The user the hold belongs to.
        user: String,
        /// The hold.
        hold: String,
        /// Idempotency key: running the command again with the same key
        /// applies it at most once (default: a new random key).
        #[arg(long)]
        key: Option<String>,
        /// Why the hold was released.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show one hold.
    Get {
        /// The user the hold belongs to.
        user: String,
        /// The hold.
        hold: String,
    },
    /// List a user's holds, newest first.
    List(HoldListArgs),
}

/// `credit hold list ...`
#[derive(Debug, Args)]
pub struct HoldListArgs {
    /// The user.
    pub user: String,
    /// Only holds in this state (as of now): active, captured, released,
    /// expired (repeatable).
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<HoldState>,
    /// Show at most this many holds; 0 shows all. When more exist, the
    /// output gives the token to continue with.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after a previous page: the token it printed (use the same
    /// --state filters).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// `credit alert ...`
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Set an alert: one event each time a write takes the balance from at
    /// least THRESHOLD to below it (the same threshold again: the alert in
    /// force).
    Set {
        /// The user.
        user: String,
        /// The balance below which an event is recorded, 0 or more.
        threshold: i64,
        /// Idempotency key (default: a new random key).
        #[arg(long)]
        key: Option<String>,
    },
    /// Remove an alert.
    Delete {
        /// The user the alert belongs to.
        user: String,
        /// The alert.
        alert: String,
    },
    /// List a user's alert events, newest first.
    Events {
        /// The user.
        user: String,
        /// Show at most this many events; 0 shows all.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after a previous page: the token it printed.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
    },
}

/// `credit watch ...`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The user (default: every user; needs an admin key).
    pub user: Option<String>,
    /// Only this type: top-up, usage, grant, refund, card-check, expiration
    /// (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub kinds: Vec<TransactionType>,
    /// Start right after this cursor (printed with every message); default:
    /// from now.
    #[arg(long, value_name = "CURSOR")]
    pub start_after: Option<String>,
    /// Also low-balance alert events (`--alerts`), or only them
    /// (`--alerts-only`).
    #[arg(long)]
    pub alerts: bool,
    /// Only low-balance alert events.
    #[arg(long, conflicts_with = "alerts")]
    pub alerts_only: bool,
    /// Stop after this many transactions (or events).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `credit lots ...`
#[derive(Debug, Args)]
pub struct LotsArgs {
    /// The user.
    pub user: String,
    /// Also list lots with nothing left (spent, refunded or expired).
    #[arg(long)]
    pub include_empty: bool,
    /// Show at most this many lots; 0 shows all. When more exist, the
    /// output gives the token to continue with.
    #[arg(long, visible_alias = "page-size", default_value_t = 50)]
    pub limit: usize,
    /// Show every lot (the same as --limit 0).
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Continue after a previous page: the token it printed (use the same
    /// --include-empty).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// The terms of the lot a top-up or grant makes.
#[derive(Debug, Args)]
pub struct LotArgs {
    /// When the credits expire: an RFC 3339 time in the future, or a time
    /// from now like 30m, 24h, 7d (default: never).
    #[arg(long, value_name = "TIME", value_parser = parse_expiry)]
    pub expires: Option<DateTime<Utc>>,
    /// Draw priority 0-100, lower is spent first (default: 100 for a
    /// top-up, 50 for a grant).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
}

/// A top-up, spend or grant: who, how much, and the common options.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The user.
    pub user: String,
    /// Credits, greater than 0.
    pub amount: i64,
    #[command(flatten)]
    pub options: WriteOptions,
}

/// What every write takes.
#[derive(Debug, Args)]
pub struct WriteOptions {
    /// Idempotency key: running the command again with the same key applies
    /// it at most once (default: a new random key).
    #[arg(long)]
    pub key: Option<String>,
    /// Why the change was made.
    #[arg(long)]
    pub reason: Option<String>,
    /// Metadata entry: `k=v` stores the string v, `k:=JSON` a JSON value.
    /// Repeat for more entries.
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_meta)]
    pub meta: Vec<(String, Json)>,
}

/// What a spend paid for.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The graph execution the usage belongs to.
    #[arg(long)]
    pub graph_exec_id: Option<String>,
    /// The graph that ran.
    #[arg(long)]
    pub graph_id: Option<String>,
    /// The node that ran.
    #[arg(long)]
    pub node_id: Option<String>,
    /// The node execution that was charged.
    #[arg(long)]
    pub node_exec_id: Option<String>,
    /// The block that ran.
    #[arg(long)]
    pub block_id: Option<String>,
}

/// `credit history ...`
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The user.
    pub user: String,
    /// Only this type: top-up, usage, grant, refund, card-check, expiration
    /// (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub kinds: Vec<TransactionType>,
    /// Only transactions at or after this time: RFC 3339, a date
    /// (YYYY-MM-DD, UTC), or an age like 30m, 2h, 7d.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only transactions before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only usage of this graph execution.
    #[arg(long)]
    pub graph_exec_id: Option<String>,
    /// Only writes made with this API key name.
    #[arg(long)]
    pub created_by: Option<String>,
    /// Show at most this many transactions; 0 shows all. When more exist,
    /// the output gives the token to continue with.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue after a previous page: the token it printed (use the same
    /// filters, with absolute times rather than ages).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}
