//! Store errors. `Storage` means the disk failed and the engine must stop; every other
//! variant is an expected outcome the caller answers (404, 409, 422).

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// The request is well-formed but the record is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The lease token does not match the item's current lease.
    #[error("item `{item}`: lease token {token} is stale ({reason})")]
    StaleLease {
        item: String,
        token: u64,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    /// Items' references are already taken (the job's `unique_references` is `reject`,
    /// or every item would be skipped).
    #[error(
        "{count} reference(s) already taken by items that are neither failed nor cancelled: {}{}",
        references.join(", "),
        if *count as usize > references.len() { ", …" } else { "" }
    )]
    ReferencesTaken { references: Vec<String>, count: u64 },
    #[error("storage failed: {0}")]
    Storage(String),
    /// The store's disk is below its free-space reserve: new work waits until space
    /// is freed (reads go on).
    #[error(
        "the store's disk is full ({} MiB free, {} MiB kept in reserve): new work is refused until space is freed",
        free >> 20,
        reserve >> 20
    )]
    DiskFull { free: u64, reserve: u64 },
    #[error("the engine is shutting down")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Storage(format!("corrupt record: {e}"))
    }
}

impl StoreError {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound {
            what,
            id: id.into(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
