//! `credit`: the credit ledger service from the command line.
//!
//! Every command prints a table (or JSON with `--json`) and exits 0, or
//! prints one line starting with `error:` and exits with the code of the
//! failure's kind (see `credit --help`).

mod args;
mod exit;
mod output;
mod parse;

use std::process::ExitCode;

use clap::Parser;
use credit_client::{CreditClient, Error, TlsConfig, Usage, Write, WriteOp};
use futures::{StreamExt, TryStreamExt};

use args::{Cli, Command, HistoryArgs, UsageArgs, UserCommand, WriteOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => exit::fail(&err),
    }
}

/// Runs the command; `Ok` holds the exit code of a call that worked (not
/// always 0: `verify` reports a broken ledger through it).
async fn run(cli: Cli) -> Result<u8, Error> {
    let client = connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::User(UserCommand::Create { user, email, name }) => {
            let mut request = client.create_user(user, email);
            if let Some(name) = name {
                request = request.name(name);
            }
            show(json, &request.await?, output::user)
        }
        Command::User(UserCommand::Get { user }) => {
            show(json, &client.get_user(user).await?, output::user)
        }
        Command::Balance { user } => show(json, &client.get_balance(user).await?, output::balance),
        Command::TopUp(args) => {
            let mut write = client.top_up(args.user, args.amount);
            // A top-up has no reason field; metadata keeps it with the
            // transaction all the same.
            if let Some(reason) = &args.options.reason {
                write = write.meta("reason", reason.clone());
            }
            show(
                json,
                &with_options(write, args.options).await?,
                output::receipt,
            )
        }
        Command::Spend { write, usage } => {
            let usage = usage_of(usage, write.options.reason.clone());
            let request = client.spend(write.user, write.amount).usage(usage);
            show(
                json,
                &with_options(request, write.options).await?,
                output::receipt,
            )
        }
        Command::Grant(args) => {
            let mut write = client.grant(args.user, args.amount);
            if let Some(reason) = &args.options.reason {
                write = write.reason(reason.clone());
            }
            show(
                json,
                &with_options(write, args.options).await?,
                output::receipt,
            )
        }
        Command::Refund {
            user,
            transaction,
            amount,
            options,
        } => {
            let mut write = client.refund(user, transaction);
            if let Some(amount) = amount {
                write = write.amount(amount);
            }
            if let Some(reason) = &options.reason {
                write = write.reason(reason.clone());
            }
            show(json, &with_options(write, options).await?, output::receipt)
        }
        Command::Transaction { user, transaction } => {
            let tx = client.get_transaction(user, transaction).await?;
            show(json, &tx, output::transaction)
        }
        Command::History(args) => history(&client, args, json).await,
        Command::Verify { user } => {
            let report = match user {
                Some(user) => client.verify_user(user).await?,
                None => client.verify_ledger().await?,
            };
            show(json, &report, output::ledger_report)?;
            return Ok(match report.clean {
                true => exit::OK,
                false => exit::LEDGER_VIOLATED,
            });
        }
    }
    .map(|()| exit::OK)
}

async fn connect(cli: &Cli) -> Result<CreditClient, Error> {
    let mut builder = CreditClient::builder(cli.server.clone()).deadline(cli.timeout);
    if let Some(token) = &cli.token {
        builder = builder.bearer_token(token.clone());
    }
    if let Some(path) = &cli.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|err| Error::InvalidInput(format!("cannot read {}: {err}", path.display())))?;
        builder = builder.tls(TlsConfig::new().ca_certificate_pem(pem));
    }
    builder.connect().await
}

/// The key and metadata every write takes.
fn with_options<Op: WriteOp>(mut write: Write<'_, Op>, options: WriteOptions) -> Write<'_, Op> {
    if let Some(key) = options.key {
        write = write.idempotency_key(key);
    }
    for (key, value) in options.meta {
        write = write.meta(key, value);
    }
    write
}

fn usage_of(args: UsageArgs, reason: Option<String>) -> Usage {
    Usage {
        graph_exec_id: args.graph_exec_id,
        graph_id: args.graph_id,
        node_id: args.node_id,
        node_exec_id: args.node_exec_id,
        block_id: args.block_id,
        reason,
    }
}

async fn history(client: &CreditClient, args: HistoryArgs, json: bool) -> Result<(), Error> {
    let mut query = client.list_transactions(args.user).kinds(args.kinds);
    if let Some(since) = args.since {
        query = query.created_after(since);
    }
    if let Some(until) = args.until {
        query = query.created_before(until);
    }
    if let Some(id) = args.graph_exec_id {
        query = query.graph_exec_id(id);
    }
    if let Some(name) = args.created_by {
        query = query.created_by(name);
    }
    let limit = match args.limit {
        0 => usize::MAX,
        n => n,
    };
    // Ask for no more than is shown, so a short listing is one small call.
    query = query.page_size(u32::try_from(limit).unwrap_or(u32::MAX));
    let transactions: Vec<_> = query.stream().take(limit).try_collect().await?;
    show(json, &transactions, |t| output::history(t))
}

/// Prints `value` as JSON or through `table`.
fn show<T: serde::Serialize>(json: bool, value: &T, table: impl FnOnce(&T)) -> Result<(), Error> {
    if json {
        output::json(value)
            .map_err(|err| Error::InvalidResponse(format!("cannot print JSON: {err}")))?;
    } else {
        table(value);
    }
    Ok(())
}
