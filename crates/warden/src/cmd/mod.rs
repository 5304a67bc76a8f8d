//! One module per subcommand, what several of them share (a running server's API, aligned
//! tables), and the async runtime the database and server commands run on.

pub mod approvals;
pub mod audit;
pub mod check;
pub mod eval;
pub mod keys;
pub mod migrate;
pub mod policy;
pub mod proposals;
pub mod replay;
pub mod serve;
pub mod server_api;
pub mod table;
pub mod test;

use anyhow::{Context, Result};
use std::future::Future;

/// Runs an async command to completion. `main` stays synchronous so the offline commands
/// (`check`, `eval`, `test`) never start a runtime; the database commands and `serve`
/// each build one here.
pub fn block_on<T>(command: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(command)
}
