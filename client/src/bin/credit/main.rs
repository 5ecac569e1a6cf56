//! `credit`: the credit ledger service from the command line.
//!
//! Every command prints a table (or JSON with `--json`) and exits 0, or
//! prints one line starting with `error:` (one JSON object with `--json`)
//! and exits with the code of the failure's kind (see `credit --help`).
//! `--timeout` bounds the whole command, connecting and retries included.

mod args;
mod exit;
mod output;
mod parse;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use credit_client::{
    AlertEventPage, CreditClient, DEFAULT_CONNECT_TIMEOUT, Error, FeedContent, HoldPage, LotPage,
    Page, TlsConfig, Usage, Write, WriteOp, parse_endpoint,
};
use futures::StreamExt;

use args::{
    AlertCommand, Cli, Command, HistoryArgs, HoldCommand, HoldListArgs, LotsArgs, UsageArgs,
    UserCommand, WatchArgs, WriteOptions,
};

fn main() -> ExitCode {
    let json = wants_json(std::env::args_os());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return exit::usage(err, json),
    };
    if let Command::Completions { shell } = cli.command {
        return completions(shell);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let err = Error::Internal {
                message: format!("cannot start the runtime: {err}"),
            };
            return exit::fail(&err, cli.json);
        }
    };
    let json = cli.json;
    let timeout = cli.timeout;
    let outcome = runtime.block_on(async {
        // The whole command, whatever the retry policy: connecting, every
        // attempt, every page.
        match tokio::time::timeout(timeout, run(cli)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::DeadlineExceeded {
                message: format!(
                    "the command did not finish within {} (--timeout)",
                    duration_text(timeout)
                ),
            }),
        }
    });
    // A DNS lookup still running on a blocking thread must not hold the
    // exit up past the timeout.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => exit::fail(&err, json),
    }
}

/// Prints the completion script for `shell`; a reader that stops early
/// (`| head`) is not an error.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "credit", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot print the completion script: {err}");
            ExitCode::from(exit::FAILURE)
        }
        _ => ExitCode::from(exit::OK),
    }
}

/// Whether `--json` is among the arguments, for reporting a command line
/// clap refused (and so could not parse) in the form asked for.
fn wants_json(args: impl Iterator<Item = OsString>) -> bool {
    args.skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

fn duration_text(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{}ms", d.as_millis()),
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
        Command::TopUp { write: args, lot } => {
            let mut write = client.top_up(args.user, args.amount);
            // A top-up has no reason field; metadata keeps it with the
            // transaction all the same.
            if let Some(reason) = &args.options.reason {
                write = write.meta("reason", reason.clone());
            }
            if let Some(at) = lot.expires {
                write = write.expire_time(at);
            }
            if let Some(priority) = lot.priority {
                write = write.priority(priority);
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
        Command::Grant {
            write: args,
            lot,
            category,
        } => {
            let mut write = client.grant(args.user, args.amount);
            if let Some(reason) = &args.options.reason {
                write = write.reason(reason.clone());
            }
            if let Some(at) = lot.expires {
                write = write.expire_time(at);
            }
            if let Some(priority) = lot.priority {
                write = write.priority(priority);
            }
            if let Some(category) = category {
                write = write.category(category);
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
        Command::Hold(command) => hold(&client, command, json).await,
        Command::Lots(args) => list_lots(&client, args, json).await,
        Command::Alert(command) => alert(&client, command, json).await,
        Command::Watch(args) => watch(&client, args, json).await,
        Command::WatchBalance { user, limit } => {
            let mut balances = std::pin::pin!(
                client
                    .watch_balance(user)
                    .stream()
                    .take(limit.unwrap_or(usize::MAX))
            );
            while let Some(balance) = balances.next().await {
                let balance = balance?;
                match json {
                    true => output::json_line(&balance).map_err(json_failed)?,
                    false => output::balance_line(&balance),
                }
            }
            Ok(())
        }
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
        // Handled before connecting.
        Command::Completions { .. } => Ok(()),
    }
    .map(|()| exit::OK)
}

async fn connect(cli: &Cli) -> Result<CreditClient, Error> {
    let tls = tls_config(cli)?;
    // `host:port` means plain text, or TLS when a --tls-* flag asks for it.
    let default_scheme = if tls.is_some() { "https" } else { "http" };
    let uri = parse_endpoint(&cli.server, default_scheme)?;
    if tls.is_some() && uri.scheme_str() == Some("http") {
        return Err(Error::InvalidInput(format!(
            "--tls-* flags need TLS, but {} is a plain-text http:// address \
             (use https:// or host:port)",
            cli.server
        )));
    }
    // As given, with the scheme it was read with.
    let address = cli.server.trim();
    let endpoint = match address.contains("://") {
        true => address.to_owned(),
        false => format!("{}://{address}", uri.scheme_str().unwrap_or(default_scheme)),
    };
    let mut builder = CreditClient::builder(endpoint)
        .deadline(cli.timeout)
        .call_timeout(cli.timeout)
        .connect_timeout(cli.timeout.min(DEFAULT_CONNECT_TIMEOUT));
    if let Some(token) = &cli.token {
        builder = builder.bearer_token(token.clone());
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    builder.connect().await
}

/// The TLS settings the flags ask for; `None` when no --tls-* flag is set
/// (an https:// server is then checked against the bundled public roots).
fn tls_config(cli: &Cli) -> Result<Option<TlsConfig>, Error> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| Error::InvalidInput(format!("cannot read {}: {err}", path.display())))
    };
    // CREDIT_CA_CERT: the variable's name before --tls-ca.
    let ca = cli.tls_ca.clone().or_else(|| {
        std::env::var_os("CREDIT_CA_CERT")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    });
    if ca.is_none()
        && cli.tls_cert.is_none()
        && cli.tls_key.is_none()
        && cli.tls_server_name.is_none()
    {
        return Ok(None);
    }
    let mut tls = TlsConfig::new();
    if let Some(path) = &ca {
        tls = tls.ca_certificate_pem(read(path)?);
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.client_identity_pem(read(cert)?, read(key)?);
    }
    if let Some(name) = &cli.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
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

/// Up to `--limit` transactions from `--page-token` on, and the token to
/// continue after them when more exist.
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
    let (transactions, next_page_token) =
        collect_pages(args.limit, args.page_token, |token, size| {
            let mut page = query.clone().page_size(size);
            if let Some(token) = token {
                page = page.page_token(token);
            }
            async move {
                let page = page.page().await?;
                Ok((page.transactions, page.next_page_token))
            }
        })
        .await?;
    let page = Page {
        transactions,
        next_page_token,
    };
    show(json, &page, output::history)
}

/// `credit hold ...`
async fn hold(client: &CreditClient, command: HoldCommand, json: bool) -> Result<(), Error> {
    match command {
        HoldCommand::Reserve {
            user,
            amount,
            ttl,
            expires,
            options,
            usage,
        } => {
            let usage = usage_of(usage, options.reason.clone());
            let mut reserve = client.reserve(user, amount);
            if usage != Usage::default() {
                reserve = reserve.usage(usage);
            }
            if let Some(ttl) = ttl {
                reserve = reserve.ttl(ttl);
            }
            if let Some(at) = expires {
                reserve = reserve.expire_time(at);
            }
            if let Some(key) = options.key {
                reserve = reserve.idempotency_key(key);
            }
            for (key, value) in options.meta {
                reserve = reserve.meta(key, value);
            }
            show(json, &reserve.await?, output::hold_receipt)
        }
        HoldCommand::Capture {
            user,
            hold,
            amount,
            options,
            usage,
        } => {
            let usage = usage_of(usage, options.reason.clone());
            let mut capture = client.capture(user, hold, amount);
            // Without usage of its own, the capture takes the hold's.
            if usage != Usage::default() {
                capture = capture.usage(usage);
            }
            if let Some(key) = options.key {
                capture = capture.idempotency_key(key);
            }
            for (key, value) in options.meta {
                capture = capture.meta(key, value);
            }
            show(json, &capture.await?, output::hold_receipt)
        }
        HoldCommand::Release {
            user,
            hold,
            key,
            reason,
        } => {
            let mut release = client.release(user, hold);
            if let Some(key) = key {
                release = release.idempotency_key(key);
            }
            if let Some(reason) = reason {
                release = release.reason(reason);
            }
            show(json, &release.await?, output::hold_receipt)
        }
        HoldCommand::Get { user, hold } => {
            show(json, &client.get_hold(user, hold).await?, output::hold)
        }
        HoldCommand::List(args) => list_holds(client, args, json).await,
    }
}

/// Up to `--limit` holds from `--page-token` on, and the token to continue
/// after them when more exist.
async fn list_holds(client: &CreditClient, args: HoldListArgs, json: bool) -> Result<(), Error> {
    let query = client.list_holds(args.user).states(args.states);
    let (holds, next_page_token) = collect_pages(args.limit, args.page_token, |token, size| {
        let mut page = query.clone().page_size(size);
        if let Some(token) = token {
            page = page.page_token(token);
        }
        async move {
            let page = page.page().await?;
            Ok((page.holds, page.next_page_token))
        }
    })
    .await?;
    let page = HoldPage {
        holds,
        next_page_token,
    };
    show(json, &page, output::holds)
}

/// Up to `--limit` lots (all with `--all`) from `--page-token` on, in draw
/// order, and the token to continue after them when more exist.
async fn list_lots(client: &CreditClient, args: LotsArgs, json: bool) -> Result<(), Error> {
    let query = client
        .list_lots(args.user)
        .include_empty(args.include_empty);
    let limit = if args.all { 0 } else { args.limit };
    let (lots, next_page_token) = collect_pages(limit, args.page_token, |token, size| {
        let mut page = query.clone().page_size(size);
        if let Some(token) = token {
            page = page.page_token(token);
        }
        async move {
            let page = page.page().await?;
            Ok((page.lots, page.next_page_token))
        }
    })
    .await?;
    let page = LotPage {
        lots,
        next_page_token,
    };
    show(json, &page, output::lots)
}

/// Up to `limit` items of a list query (0: all), from `token` on, and the
/// token to continue after them when more exist. Each page asks for no more
/// than is still wanted, so that token continues right after the last item
/// shown.
/// Prints the feed as it comes: transactions (and with --json every
/// heartbeat too, so a script always holds the latest cursor).
async fn watch(client: &CreditClient, args: WatchArgs, json: bool) -> Result<(), Error> {
    let mut feed = client
        .watch_transactions(args.user.unwrap_or_default())
        .types(args.kinds);
    if let Some(cursor) = args.start_after {
        feed = feed.start_after(cursor);
    }
    if args.alerts {
        feed = feed.content(FeedContent::TransactionsAndAlertEvents);
    } else if args.alerts_only {
        feed = feed.content(FeedContent::AlertEvents);
    }
    let mut feed = feed.stream();
    let mut left = args.limit.unwrap_or(usize::MAX);
    while left > 0
        && let Some(message) = feed.next().await
    {
        let message = message?;
        // Heartbeats do not count towards --limit, and people do not see
        // them (a script with --json does: they carry the latest cursor).
        if message.transaction.is_some() || message.alert_event.is_some() {
            left -= 1;
        } else if !json {
            continue;
        }
        match json {
            true => output::json_line(&message).map_err(json_failed)?,
            false => output::feed_line(&message),
        }
    }
    Ok(())
}

fn json_failed(err: serde_json::Error) -> Error {
    Error::InvalidResponse(format!("cannot print JSON: {err}"))
}

async fn alert(client: &CreditClient, command: AlertCommand, json: bool) -> Result<(), Error> {
    match command {
        AlertCommand::Set {
            user,
            threshold,
            key,
        } => {
            let mut set = client.set_balance_alert(user, threshold);
            if let Some(key) = key {
                set = set.idempotency_key(key);
            }
            show(json, &set.await?, output::alert)
        }
        AlertCommand::Delete { user, alert } => show(
            json,
            &client.delete_balance_alert(user, alert).await?,
            output::alert,
        ),
        AlertCommand::Events {
            user,
            limit,
            page_token,
        } => {
            let query = client.list_alert_events(user);
            let (events, next_page_token) = collect_pages(limit, page_token, |token, size| {
                let mut page = query.clone().page_size(size);
                if let Some(token) = token {
                    page = page.page_token(token);
                }
                async move {
                    let page = page.page().await?;
                    Ok((page.events, page.next_page_token))
                }
            })
            .await?;
            let page = AlertEventPage {
                events,
                next_page_token,
            };
            show(json, &page, output::alert_events)
        }
    }
}

async fn collect_pages<T, Fut>(
    limit: usize,
    mut token: Option<String>,
    mut page: impl FnMut(Option<String>, u32) -> Fut,
) -> Result<(Vec<T>, Option<String>), Error>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), Error>>,
{
    let limit = match limit {
        0 => usize::MAX,
        n => n,
    };
    let mut items = Vec::new();
    loop {
        let wanted = (limit - items.len()).min(1000);
        let (more, next) = page(token.clone(), u32::try_from(wanted).unwrap_or(1000)).await?;
        items.extend(more);
        match next {
            Some(next) if items.len() < limit => {
                // A server that hands back the token it was given would
                // make this loop forever.
                if token.as_ref() == Some(&next) {
                    return Err(Error::InvalidResponse(
                        "the server returned the page token it was given".to_owned(),
                    ));
                }
                token = Some(next);
            }
            next => return Ok((items, next)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_flag_is_found_before_a_double_dash() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(
            args(&["credit", "balance", "--json", "x"]).into_iter()
        ));
        assert!(!wants_json(
            args(&["credit", "balance", "--", "--json"]).into_iter()
        ));
        assert!(!wants_json(args(&["--json"]).into_iter()));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
