//! The database a benchmark runs on: a fresh one the tool creates (and drops
//! at the end), or the existing server's own.

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database};

use crate::args::DbKind;

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

/// A database the benchmark uses.
pub struct BenchDb {
    pub kind: DbKind,
    /// The URL the server and the raw SQL runs connect to.
    pub url: String,
    /// Set when this tool created the database (and so drops it).
    created: Option<Created>,
}

struct Created {
    /// The admin URL it was created through (None for SQLite).
    admin_url: Option<String>,
    name: String,
    /// SQLite's directory; removed when dropped.
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// Creates `credit_bench_<random>` (SQLite: a file in a temporary
    /// directory) through `admin_url` or the kind's default.
    pub async fn create(kind: DbKind, admin_url: Option<&str>) -> anyhow::Result<BenchDb> {
        let name = format!("credit_bench_{}", uuid::Uuid::new_v4().simple());
        if kind == DbKind::Sqlite {
            let dir = tempfile::Builder::new()
                .prefix("credit-bench-")
                .tempdir()
                .context("cannot create a temporary directory for SQLite")?;
            let path = dir.path().join("credits.db");
            return Ok(BenchDb {
                kind,
                url: format!("sqlite://{}?mode=rwc", path.display()),
                created: Some(Created {
                    admin_url: None,
                    name,
                    _dir: Some(dir),
                }),
            });
        }
        let admin_url = admin_url
            .unwrap_or(match kind {
                DbKind::Postgres => DEFAULT_POSTGRES,
                _ => DEFAULT_MYSQL,
            })
            .to_owned();
        anyhow::ensure!(
            DbKind::from_url(&admin_url) == Some(kind),
            "--database-url {} is not a {} URL",
            redact(&admin_url),
            kind.name()
        );
        let admin = Database::connect(&admin_url)
            .await
            .with_context(|| format!("cannot connect to {}", redact(&admin_url)))?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        admin.close().await.ok();
        let mut url = url::Url::parse(&admin_url).context("--database-url is not a URL")?;
        url.set_path(&format!("/{name}"));
        Ok(BenchDb {
            kind,
            url: url.to_string(),
            created: Some(Created {
                admin_url: Some(admin_url),
                name,
                _dir: None,
            }),
        })
    }

    /// The existing database of a server this tool did not start.
    pub fn existing(url: &str) -> anyhow::Result<BenchDb> {
        let kind = DbKind::from_url(url)
            .with_context(|| format!("unsupported database URL {}", redact(url)))?;
        Ok(BenchDb {
            kind,
            url: url.to_owned(),
            created: None,
        })
    }

    /// A description for messages (no password).
    pub fn describe(&self) -> String {
        redact(&self.url)
    }

    /// Drops the database if this tool created it; `keep` leaves it (and
    /// says where it is) for a look.
    pub async fn finish(self, keep: bool) -> anyhow::Result<()> {
        let Some(created) = self.created else {
            return Ok(());
        };
        if keep {
            eprintln!("database kept: {}", redact(&self.url));
            if let Some(dir) = created._dir {
                // Keep the SQLite directory: the URL points into it.
                let _ = dir.keep();
            }
            return Ok(());
        }
        let Some(admin_url) = created.admin_url else {
            return Ok(());
        };
        let admin = Database::connect(&admin_url).await?;
        let sql = match self.kind {
            DbKind::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", created.name),
            _ => format!("DROP DATABASE IF EXISTS {}", created.name),
        };
        admin
            .execute_unprepared(&sql)
            .await
            .with_context(|| format!("cannot drop database {}", created.name))?;
        admin.close().await.ok();
        Ok(())
    }
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
