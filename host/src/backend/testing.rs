//! Helpers for the backends' unit tests: a database of the test's own on the PostgreSQL or MySQL server
//! of the tests.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

// The MySQL helper below shares the imports.

/// Registers a projector `t` of one table, `table`, made by `ddl`, in `db`, with one target of
/// `role` (a clone is keyed `k1`) whose tables are created. Returns the target and the
/// projector's description.
pub(crate) fn one_table_target(
    db: &super::Db,
    table: &str,
    ddl: &[&str],
    role: crate::model::Role,
) -> (crate::model::Target, crate::model::Description) {
    let description = crate::model::Description {
        name: "t".into(),
        version: "1".into(),
        tables: vec![crate::model::TableDecl {
            name: table.into(),
            ddl: ddl
                .iter()
                .map(|statement| (*statement).to_string())
                .collect(),
        }],
        handles: vec![],
        partition_by: vec![],
    };
    let version = db
        .register_version("h", b"wasm", &description)
        .expect("version");
    let key = (role == crate::model::Role::Clone).then_some("k1");
    let target = db
        .write(|db| {
            let target = db.insert_target("t", version, role, key)?;
            db.create_tables(&target, &description)?;
            Ok::<_, super::StoreError>(target)
        })
        .expect("create");
    (target, description)
}

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

/// A fresh database on the MySQL or MariaDB test server (`ZDR_TEST_MYSQL_URL`, default
/// root's `test` database on the local server), dropped at the end with the databases its
/// targets made. Fails, never skips, when the server is unreachable.
pub(crate) struct MyTestDatabase {
    admin: String,
    name: String,
    rt: tokio::runtime::Runtime,
}

impl MyTestDatabase {
    pub(crate) fn new(tag: &str) -> MyTestDatabase {
        let admin = std::env::var("ZDR_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        let name = format!("zdr_unit_{tag}_{}", std::process::id());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let test = MyTestDatabase { admin, name, rt };
        let mut conn = test.admin_connection();
        for statement in [
            format!("DROP DATABASE IF EXISTS `{}`", test.name),
            format!("CREATE DATABASE `{}`", test.name),
        ] {
            test.exec(&mut conn, &statement);
        }
        test
    }

    fn admin_connection(&self) -> sqlx::MySqlConnection {
        self.rt
            .block_on(sqlx::MySqlConnection::connect(&self.admin))
            .unwrap_or_else(|e| {
                panic!(
                    "MySQL or MariaDB at {} is required for this test: {e}",
                    self.admin
                )
            })
    }

    pub(crate) fn url(&self) -> String {
        let base = self
            .admin
            .rsplit_once('/')
            .map_or(self.admin.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }

    /// A plain connection of the test's own, as the application's writer.
    pub(crate) fn connect(&self) -> sqlx::MySqlConnection {
        self.rt
            .block_on(sqlx::MySqlConnection::connect(&self.url()))
            .expect("connect")
    }

    pub(crate) fn exec(&self, conn: &mut sqlx::MySqlConnection, text: &str) {
        self.rt
            .block_on(sqlx::raw_sql(AssertSqlSafe(text.to_string())).execute(conn))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

impl Drop for MyTestDatabase {
    fn drop(&mut self) {
        let mut conn = self.admin_connection();
        let targets: Vec<String> = self
            .rt
            .block_on(
                sqlx::query_scalar::<_, String>(
                    "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
                     WHERE schema_name LIKE 'zdr\\_%'",
                )
                .fetch_all(&mut conn),
            )
            .unwrap_or_default();
        let hash = crate::backend::naming::Layout::Databases {
            live: self.name.clone(),
        }
        .namespace(0, crate::model::Role::Clone, Some("x"))
        .and_then(|n| n.rsplit_once('_').map(|(_, h)| h.to_owned()))
        .unwrap_or_default();
        for database in targets.iter().filter(|d| d.ends_with(&hash)) {
            let _ = self.rt.block_on(
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{database}`"
                )))
                .execute(&mut conn),
            );
        }
        let _ = self.rt.block_on(
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{}`",
                self.name
            )))
            .execute(&mut conn),
        );
    }
}
