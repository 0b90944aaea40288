//! SQLite helpers: bound parameters only, typed rows via `to_array()` (never `one()`, which
//! panics on an empty result), errors logged and masked as 500.

use serde::de::DeserializeOwned;
use worker::{SqlStorage, SqlStorageValue};

use edge_realtime_core::error::ApiError;

/// Run a statement for its side effects.
pub fn exec(sql: &SqlStorage, query: &str, binds: Vec<SqlStorageValue>) -> Result<(), ApiError> {
    sql.exec(query, binds).map(|_| ()).map_err(|e| {
        worker::console_error!("sql exec failed ({query}): {e}");
        ApiError::internal()
    })
}

/// Run a query and deserialize every row.
pub fn rows<T: DeserializeOwned>(sql: &SqlStorage, query: &str, binds: Vec<SqlStorageValue>) -> Result<Vec<T>, ApiError> {
    sql.exec(query, binds).and_then(|c| c.to_array::<T>()).map_err(|e| {
        worker::console_error!("sql query failed ({query}): {e}");
        ApiError::internal()
    })
}

/// The first row, if any.
pub fn first<T: DeserializeOwned>(sql: &SqlStorage, query: &str, binds: Vec<SqlStorageValue>) -> Result<Option<T>, ApiError> {
    Ok(rows(sql, query, binds)?.into_iter().next())
}

/// Bind an integer. SQLite integers reach JS as numbers, so keep them within ±(2^53−1).
pub fn int(v: i64) -> SqlStorageValue {
    SqlStorageValue::Integer(v)
}

/// Bind an optional string.
pub fn opt_text(v: Option<&str>) -> SqlStorageValue {
    v.map_or(SqlStorageValue::Null, |s| SqlStorageValue::String(s.to_owned()))
}
