//! Helpers for the backends' unit tests: a database of the test's own on the PostgreSQL server
//! of the tests.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// A fresh database on the test server (`ZDR_TEST_POSTGRES_URL`, default the local
/// `postgres` user's `test` database), dropped at the end. Fails, never skips, when the
/// server is unreachable.
pub(crate) struct TestDatabase {
    admin: String,
    name: String,
    rt: tokio::runtime::Runtime,
}

impl TestDatabase {
    pub(crate) fn new(tag: &str) -> TestDatabase {
        let admin = std::env::var("ZDR_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("zdr_unit_{tag}_{}", std::process::id());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut conn = PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
            for statement in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ] {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
            }
        });
        TestDatabase { admin, name, rt }
    }

    pub(crate) fn url(&self) -> String {
        let base = self
            .admin
            .rsplit_once('/')
            .map_or(self.admin.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }

    /// A plain connection of the test's own, as the application's writer.
    pub(crate) fn connect(&self) -> PgConnection {
        self.rt
            .block_on(PgConnection::connect(&self.url()))
            .expect("connect")
    }

    pub(crate) fn exec(&self, conn: &mut PgConnection, text: &str) {
        self.rt
            .block_on(sqlx::raw_sql(AssertSqlSafe(text.to_string())).execute(conn))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let _ = self.rt.block_on(async move {
            let mut conn = PgConnection::connect(&admin).await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
        });
    }
}
