//! Every client keeps up with the API: each RPC of `credit.v1.CreditService`
//! (read from `credit_proto::FILE_DESCRIPTOR_SET`, so from credit.proto
//! itself) must have a method in the Rust client, a command in the `credit`
//! CLI, and a method in the Python and TypeScript clients. A new RPC
//! without them fails here, naming the RPC and the client.
//!
//! Names follow each language's convention from the RPC name (`TopUp`:
//! `top_up`, `top-up`, `topUp`); where a client names it otherwise, the
//! tables below say so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::FileDescriptorSet;

const SERVICE_PACKAGE: &str = "credit.v1";
const SERVICE: &str = "CreditService";

/// CLI commands whose names are not the RPC's in kebab-case.
const CLI_COMMANDS: &[(&str, &str)] = &[
    ("CreateUser", "user create"),
    ("GetUser", "user get"),
    ("GetBalance", "balance"),
    ("GetTransaction", "transaction"),
    ("ListTransactions", "history"),
    ("VerifyLedger", "verify"),
    ("Reserve", "hold reserve"),
    ("Capture", "hold capture"),
    ("Release", "hold release"),
    ("GetHold", "hold get"),
    ("ListHolds", "hold list"),
    ("ListLots", "lots"),
    ("WatchTransactions", "watch"),
    ("SetBalanceAlert", "alert set"),
    ("DeleteBalanceAlert", "alert delete"),
    ("ListAlertEvents", "alert events"),
];

/// Python methods whose names are not the RPC's in snake_case.
const PYTHON_METHODS: &[(&str, &str)] = &[];

/// TypeScript methods whose names are not the RPC's in lowerCamelCase.
const TYPESCRIPT_METHODS: &[(&str, &str)] = &[];

/// The clients' sources, relative to the repository root.
const RUST_SOURCES: &str = "client/src";
const CLI_ARGS: &str = "client/src/bin/credit/args.rs";
const PYTHON_SOURCES: &[&str] = &[
    "client/python/src/credit_client/_sync.py",
    "client/python/src/credit_client/_aio.py",
];
const TYPESCRIPT_SOURCE: &str = "client/typescript/src/client.ts";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits in the repository root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// The service's RPC names, in the order credit.proto declares them.
fn rpcs() -> Vec<String> {
    let set = FileDescriptorSet::decode(credit_proto::FILE_DESCRIPTOR_SET)
        .expect("FILE_DESCRIPTOR_SET decodes");
    let services: Vec<_> = set
        .file
        .iter()
        .filter(|file| file.package() == SERVICE_PACKAGE)
        .flat_map(|file| &file.service)
        .filter(|service| service.name() == SERVICE)
        .collect();
    assert_eq!(
        services.len(),
        1,
        "{SERVICE_PACKAGE}.{SERVICE} once in the descriptor"
    );
    let names: Vec<String> = services[0]
        .method
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    assert!(names.len() >= 10, "too few RPCs read: {names:?}");
    names
}

/// `ListTransactions` -> `["List", "Transactions"]`.
fn words(pascal: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for c in pascal.chars() {
        match words.last_mut() {
            Some(word) if !c.is_ascii_uppercase() => word.push(c),
            _ => words.push(c.to_string()),
        }
    }
    words
}

fn snake_case(pascal: &str) -> String {
    words(pascal).join("_").to_ascii_lowercase()
}

fn kebab_case(pascal: &str) -> String {
    words(pascal).join("-").to_ascii_lowercase()
}

fn lower_camel_case(pascal: &str) -> String {
    let mut chars = pascal.chars();
    chars
        .next()
        .map(|first| first.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// The client's name for `rpc`: the table's, else the convention's.
fn name_for(rpc: &str, table: &[(&str, &str)], convention: fn(&str) -> String) -> String {
    table
        .iter()
        .find(|(name, _)| *name == rpc)
        .map(|(_, method)| (*method).to_owned())
        .unwrap_or_else(|| convention(rpc))
}

/// Fails naming every RPC a client lacks.
fn require_all(client: &str, missing: Vec<String>) {
    assert!(
        missing.is_empty(),
        "RPCs without a method in the {client}:\n  {}\n\
         Add them to the {client}, or name them in this test's table for it \
         when the client calls them something else.",
        missing.join("\n  ")
    );
}

/// Whether some line of `source`, trimmed, starts with one of `prefixes`.
fn declares(source: &str, prefixes: &[String]) -> bool {
    source.lines().any(|line| {
        let line = line.trim_start();
        prefixes
            .iter()
            .any(|prefix| line.starts_with(prefix.as_str()))
    })
}

#[test]
fn names_follow_the_conventions() {
    assert_eq!(snake_case("ListTransactions"), "list_transactions");
    assert_eq!(kebab_case("TopUp"), "top-up");
    assert_eq!(lower_camel_case("VerifyLedger"), "verifyLedger");
    assert_eq!(snake_case("Spend"), "spend");
}

#[test]
fn the_tables_name_only_real_rpcs() {
    let rpcs: BTreeSet<String> = rpcs().into_iter().collect();
    for (table, entries) in [
        ("CLI_COMMANDS", CLI_COMMANDS),
        ("PYTHON_METHODS", PYTHON_METHODS),
        ("TYPESCRIPT_METHODS", TYPESCRIPT_METHODS),
        ("credit_client::RPC_METHODS", credit_client::RPC_METHODS),
    ] {
        for (rpc, _) in entries {
            assert!(
                rpcs.contains(*rpc),
                "{table} maps {rpc}, which {SERVICE} does not have"
            );
        }
    }
}

/// The Rust client: its `RPC_METHODS` table (which a unit test in
/// credit-client checks against the methods at compile time), and a
/// `pub fn` / `pub async fn` of that name in its sources.
#[test]
fn rust_client_covers_every_rpc() {
    let sources: String = std::fs::read_dir(repo_root().join(RUST_SOURCES))
        .expect("client/src")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| std::fs::read_to_string(path).expect("a client source"))
        .collect();
    let missing = rpcs()
        .into_iter()
        .filter_map(|rpc| {
            let Some((_, method)) = credit_client::RPC_METHODS
                .iter()
                .find(|(name, _)| *name == rpc)
            else {
                return Some(format!(
                    "{rpc}: not in credit_client::RPC_METHODS (expected a CreditClient::{})",
                    snake_case(&rpc)
                ));
            };
            let declared = [
                format!("pub fn {method}("),
                format!("pub async fn {method}("),
            ];
            (!declares(&sources, &declared)).then(|| {
                format!(
                    "{rpc}: RPC_METHODS names {method}, but {RUST_SOURCES} has no pub fn {method}("
                )
            })
        })
        .collect();
    require_all("Rust client (credit-client)", missing);
}

/// The `credit` CLI: its clap subcommands, read from the `Command` enum and
/// the enums of its nested subcommands (`user create`).
#[test]
fn cli_covers_every_rpc() {
    let commands = cli_commands(&read(CLI_ARGS));
    assert!(
        commands.contains("balance") && commands.contains("user create"),
        "the CLI's commands were not read from {CLI_ARGS}: {commands:?}"
    );
    let missing = rpcs()
        .into_iter()
        .filter_map(|rpc| {
            let command = name_for(&rpc, CLI_COMMANDS, kebab_case);
            (!commands.contains(&command))
                .then(|| format!("{rpc}: no `credit {command}` command in {CLI_ARGS}"))
        })
        .collect();
    require_all("CLI (credit)", missing);
}

/// Every command path of the CLI, e.g. `balance`, `user create`.
fn cli_commands(source: &str) -> BTreeSet<String> {
    let enums = enum_variants(source);
    let mut commands = BTreeSet::new();
    for (name, inner) in enums
        .get("Command")
        .expect("a `pub enum Command` in args.rs")
    {
        match inner.as_ref().and_then(|inner| enums.get(inner)) {
            Some(subcommands) => {
                for (sub, _) in subcommands {
                    commands.insert(format!("{name} {sub}"));
                }
            }
            None => {
                commands.insert(name.clone());
            }
        }
    }
    commands
}

/// A subcommand's name and the type its variant wraps, if any.
type Variant = (String, Option<String>);

/// For each `pub enum` of the file: its variants as command names (kebab
/// case, or a `#[command(name = "...")]`) with the type a tuple variant
/// wraps.
fn enum_variants(source: &str) -> std::collections::BTreeMap<String, Vec<Variant>> {
    let mut enums = std::collections::BTreeMap::new();
    let mut current: Option<(String, Vec<Variant>)> = None;
    let mut renamed: Option<String> = None;
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("pub enum ") {
            let name = rest.trim_end_matches(['{', ' ']).to_owned();
            current = Some((name, Vec::new()));
            continue;
        }
        let Some((_, variants)) = current.as_mut() else {
            continue;
        };
        if line == "}" {
            let (name, variants) = current.take().expect("inside an enum");
            enums.insert(name, variants);
            continue;
        }
        // Variants and their attributes sit at exactly four spaces.
        let Some(item) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) else {
            continue;
        };
        if item.starts_with("#[command(") {
            if let Some(start) = item.find("name = \"") {
                let rest = &item[start + "name = \"".len()..];
                renamed = rest.split('"').next().map(str::to_owned);
            }
            continue;
        }
        if !item.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        let ident: String = item
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let wrapped = item[ident.len()..]
            .strip_prefix('(')
            .and_then(|rest| rest.split(')').next())
            .map(str::to_owned);
        let command = renamed.take().unwrap_or_else(|| kebab_case(&ident));
        variants.push((command, wrapped));
    }
    enums
}

/// The Python client: `def <snake_case>(` in the sync and the asyncio
/// client alike.
#[test]
fn python_client_covers_every_rpc() {
    let mut missing = Vec::new();
    for path in PYTHON_SOURCES {
        let source = read(path);
        for rpc in rpcs() {
            let method = name_for(&rpc, PYTHON_METHODS, snake_case);
            let declared = [format!("def {method}("), format!("async def {method}(")];
            if !declares(&source, &declared) {
                missing.push(format!("{rpc}: no `def {method}(` in {path}"));
            }
        }
    }
    require_all("Python client (credit_client)", missing);
}

/// The TypeScript client: a `<lowerCamelCase>(` method of the client class.
#[test]
fn typescript_client_covers_every_rpc() {
    let source = read(TYPESCRIPT_SOURCE);
    let missing = rpcs()
        .into_iter()
        .filter_map(|rpc| {
            let method = name_for(&rpc, TYPESCRIPT_METHODS, lower_camel_case);
            let declared = [format!("{method}("), format!("async {method}(")];
            (!declares(&source, &declared))
                .then(|| format!("{rpc}: no `{method}(` method in {TYPESCRIPT_SOURCE}"))
        })
        .collect();
    require_all("TypeScript client", missing);
}
