//! Opening the store a command works on, with the migration rule of DESIGN §10: SQLite is
//! migrated on open, PostgreSQL only when asked, because several replicas share it and a
//! schema change there is an operator's decision.

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use warden_store::{Backend, Store};

/// The `--db` flag, shared by every command that talks to the database directly.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Database URL: a SQLite file path, sqlite://PATH, or postgres://USER@HOST/DB.
    // The environment's value is hidden from --help: it may hold a password.
    #[arg(
        long = "db",
        value_name = "URL",
        env = "WARDEN_DB",
        hide_env_values = true,
        default_value = "./warden.db",
        global = true
    )]
    pub url: String,
}

/// What [`open`] does about migrations that are not applied yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// Apply them, on either backend.
    Apply,
    /// Apply them on SQLite; on PostgreSQL refuse to go on while any is missing.
    RequireCurrent,
}

/// Opens the store at `url` and brings its schema up to date as `migrate` says.
pub async fn open(url: &str, migrate: Migrate) -> Result<Arc<dyn Store>> {
    let store = connect(url).await?;
    if store.backend() == Backend::Sqlite || migrate == Migrate::Apply {
        store
            .migrate()
            .await
            .with_context(|| format!("cannot migrate the database at {}", display_url(url)))?;
        return Ok(store);
    }
    let pending = store
        .pending_migrations()
        .await
        .with_context(|| format!("cannot read the migrations of {}", display_url(url)))?;
    if let Some(first) = pending.first() {
        bail!(
            "the database is missing migration `{first}`: run `warden migrate --db URL` or `warden serve --migrate`"
        );
    }
    Ok(store)
}

/// Opens the store at `url` and leaves its schema as it is.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    warden_store::open(url)
        .await
        .with_context(|| format!("cannot open the database at {}", display_url(url)))
}

/// The backend a URL names, decided from its scheme alone, without connecting. Follows
/// the rules of [`warden_store::open`].
pub fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Backend::Postgres);
    }
    if url.is_empty() {
        bail!("invalid database url: the url is empty");
    }
    match url.split_once("://") {
        Some(("sqlite", _)) | None => Ok(Backend::Sqlite),
        // Only the scheme: the rest may hold a password.
        Some((scheme, _)) => bail!(
            "unsupported database url scheme `{scheme}`: use sqlite://PATH, a file path or postgres://…"
        ),
    }
}

/// The URL as it may appear in a message: a SQLite path as given, a server URL as
/// scheme and host only, so a password in it is never printed.
pub fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("`{url}`");
    };
    if scheme == "sqlite" {
        return format!("`{url}`");
    }
    // The user info ends at the last `@` before the query; a password may hold `/`.
    let before_query = rest.split(['?', '#']).next().unwrap_or_default();
    let host = before_query
        .rsplit_once('@')
        .map_or(before_query, |(_, host)| host);
    let host = host.split('/').next().unwrap_or_default();
    format!("`{scheme}://{host}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_urls_never_carry_credentials() {
        let cases = [
            ("./warden.db", "`./warden.db`"),
            ("sqlite:///var/w.db", "`sqlite:///var/w.db`"),
            ("postgres://u:hunter2@db:5432/w", "`postgres://db:5432`"),
            (
                "postgresql://u:hun/ter@2@db/w?sslmode=require",
                "`postgresql://db`",
            ),
            (
                "postgres://db/w?options=-c%20search_path%3Dx",
                "`postgres://db`",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(display_url(url), shown, "{url}");
        }
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        assert_eq!(backend_of("./warden.db").unwrap(), Backend::Sqlite);
        assert_eq!(backend_of("sqlite://w.db").unwrap(), Backend::Sqlite);
        assert_eq!(backend_of("sqlite::memory:").unwrap(), Backend::Sqlite);
        assert_eq!(backend_of("postgres://h/db").unwrap(), Backend::Postgres);
        assert_eq!(backend_of("postgresql://h/db").unwrap(), Backend::Postgres);
        let error = backend_of("mysql://root:hunter2@h/db").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(backend_of("").is_err());
    }
}
