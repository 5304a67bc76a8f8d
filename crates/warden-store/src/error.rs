//! The one error type of the store, with constraint violations already turned into domain errors.

/// Everything that can go wrong in the store.
///
/// Unique-constraint violations never surface as [`StoreError::Database`]: the store maps
/// them to the domain variant that names what already exists.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names a scheme the store does not speak.
    #[error(
        "unsupported database url scheme `{0}`: use sqlite://PATH, a file path or postgres://…"
    )]
    UnsupportedScheme(String),

    /// The database URL is empty or otherwise unusable.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),

    /// A PostgreSQL schema name the store refuses to interpolate into SQL.
    #[error(
        "invalid schema name `{0}`: use 1 to 63 lowercase letters, digits and underscores, not starting with a digit"
    )]
    InvalidSchema(String),

    /// An API key with this id already exists.
    #[error("api key `{0}` already exists")]
    DuplicateKey(String),

    /// An audit event with this id already exists; the whole batch was rolled back.
    #[error("audit event `{0}` already exists")]
    DuplicateEvent(String),

    /// A decision with this id already exists; the whole batch was rolled back.
    #[error("decision `{0}` already exists")]
    DuplicateDecision(String),

    /// An event or decision the store refuses to record; the whole batch was rolled back.
    #[error("invalid audit event `{id}`: {reason}")]
    InvalidEvent {
        /// The id of the offending event.
        id: String,
        /// Why it was refused.
        reason: String,
    },

    /// A stored row that cannot be decoded, which means someone wrote it outside the store.
    #[error("stored {what} `{id}` is unreadable: {detail}")]
    Corrupt {
        /// What kind of record it is (`audit event`, `decision`, `api key`).
        what: &'static str,
        /// Its id (for audit events, its seq).
        id: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A value could not be encoded as JSON for storage or hashing.
    #[error("cannot encode `{id}` for storage: {source}")]
    Encode {
        /// The id of the record being written.
        id: String,
        /// The encoder's error.
        source: serde_json::Error,
    },

    /// A migration recorded as applied differs from the one built into this binary.
    #[error(
        "applied migration `{0}` differs from the one in this build; applied migrations must never be edited"
    )]
    MigrationChanged(String),

    /// Background work (chain verification) stopped before finishing.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),

    /// Any other database failure: connection, I/O, syntax, lock timeout.
    // Not a `#[source]`: the message already carries the cause, and an error chain printed
    // with its sources would say it twice.
    #[error("database error: {0}")]
    Database(sqlx::Error),

    /// A failure of SQLite's appender connection (see `sqlite_appender`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),

    /// The appender thread could not be started.
    #[error("cannot start the sqlite appender thread: {0}")]
    Thread(std::io::Error),

    /// The appender thread is gone (it panicked); nothing more can be appended.
    #[error("the sqlite appender thread stopped")]
    AppenderStopped,
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// Whether `error` is a unique-constraint violation, which callers map to a domain error.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}
