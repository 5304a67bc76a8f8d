//! `warden migrate`: apply the pending schema migrations, or print their SQL for a DBA to
//! review or run by hand.

use crate::Outcome;
use crate::db::{self, DbArgs};
use anyhow::{Context, Result};
use serde_json::json;
use std::io::Write;

/// Arguments of `warden migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
    /// Print the SQL of every migration for the database's backend instead of applying
    /// anything; does not connect.
    #[arg(long)]
    print: bool,
}

/// Prints the migrations, or applies the pending ones and lists them.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    if args.print {
        print(&args.db.url, json)
    } else {
        super::block_on(apply(&args.db.url, json))
    }
}

fn print(url: &str, json: bool) -> Result<Outcome> {
    let backend = db::backend_of(url)?;
    let migrations = warden_store::migrations(backend);
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = migrations
            .iter()
            .map(|m| json!({"name": m.name, "sql": m.sql, "checksum": m.checksum()}))
            .collect();
        writeln!(
            out,
            "{}",
            json!({"backend": backend.as_str(), "migrations": list})
        )?;
        return Ok(Outcome::Ok);
    }
    for migration in migrations {
        writeln!(out, "-- {}", migration.name)?;
        write!(out, "{}", migration.sql)?;
        if !migration.sql.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(Outcome::Ok)
}

async fn apply(url: &str, json: bool) -> Result<Outcome> {
    let store = db::connect(url).await?;
    let applied = store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the database at {}", db::display_url(url)))?;
    let mut out = std::io::stdout().lock();
    if json {
        let body = json!({"backend": store.backend().as_str(), "applied": applied});
        writeln!(out, "{body}")?;
    } else if applied.is_empty() {
        writeln!(out, "up to date")?;
    } else {
        for name in &applied {
            writeln!(out, "applied {name}")?;
        }
    }
    Ok(Outcome::Ok)
}
