//! A fresh, empty database per test, on any supported backend.

use sea_orm::{ConnectionTrait, Database};

/// A database engine the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    /// The variable naming the server's admin URL (unused for SQLite).
    pub fn env_var(self) -> &'static str {
        match self {
            Backend::Sqlite => "(none)",
            Backend::Postgres => "CREDIT_TEST_POSTGRES_URL",
            Backend::MySql => "CREDIT_TEST_MYSQL_URL",
        }
    }
}

/// A database created for one test.
pub struct TestDb {
    /// The URL the server under test connects to.
    pub url: String,
    pub backend: Backend,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates a fresh database, or `None` when the backend's URL is unset.
    pub async fn create(backend: Backend) -> anyhow::Result<Option<TestDb>> {
        let name = format!("credit_test_{}", uuid::Uuid::new_v4().simple());
        if backend == Backend::Sqlite {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("credits.db");
            return Ok(Some(TestDb {
                url: format!("sqlite://{}?mode=rwc", path.display()),
                backend,
                admin_url: None,
                name,
                _dir: Some(dir),
            }));
        }
        let Ok(admin_url) = std::env::var(backend.env_var()) else {
            return Ok(None);
        };
        let admin = Database::connect(&admin_url).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await?;
        let mut url = url::Url::parse(&admin_url)?;
        url.set_path(&format!("/{name}"));
        Ok(Some(TestDb {
            url: url.to_string(),
            backend,
            admin_url: Some(admin_url),
            name,
            _dir: None,
        }))
    }

    /// A fresh SQLite database (always available).
    pub async fn sqlite() -> anyhow::Result<TestDb> {
        Self::create(Backend::Sqlite)
            .await?
            .ok_or_else(|| anyhow::anyhow!("SQLite is always available"))
    }

    /// Drops the database (SQLite: its directory goes with `self`).
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let Some(admin_url) = &self.admin_url else {
            return Ok(());
        };
        let admin = Database::connect(admin_url).await?;
        let sql = match self.backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        admin.execute_unprepared(&sql).await?;
        admin.close().await?;
        Ok(())
    }
}
