//! SQLite helpers: bound parameters only, typed rows via `to_array()` (never `one()`, which
//! panics on an empty result), errors logged and masked as 500.

use serde::de::DeserializeOwned;
use worker::{SqlStorage, SqlStorageValue};

use edge_realtime_core::error::ApiError;

/// Run a statement for its side effects. The bindings cross into JS as one JSON string (one
/// crossing per statement, instead of one per binding plus the array); blobs, which JSON cannot
/// carry, take workers-rs's path.
pub fn exec(sql: &SqlStorage, query: &str, binds: Vec<SqlStorageValue>) -> Result<(), ApiError> {
    let failed = |e: String| {
        worker::console_error!("sql exec failed ({query}): {e}");
        ApiError::internal()
    };
    match binds_json(&binds) {
        Some(json) => crate::kit::runtime::sql_exec(sql.as_ref(), query, &json).map_err(|e| failed(format!("{e:?}"))),
        None => sql.exec(query, binds).map(|_| ()).map_err(|e| failed(e.to_string())),
    }
}

/// The bindings as a JSON array, or `None` if one is a blob.
fn binds_json(binds: &[SqlStorageValue]) -> Option<String> {
    let values: Option<Vec<serde_json::Value>> = binds
        .iter()
        .map(|v| match v {
            SqlStorageValue::Null => Some(serde_json::Value::Null),
            SqlStorageValue::Boolean(b) => Some((*b).into()),
            SqlStorageValue::Integer(i) => Some((*i).into()),
            SqlStorageValue::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number),
            SqlStorageValue::String(s) => Some(s.as_str().into()),
            SqlStorageValue::Blob(_) => None,
        })
        .collect();
    values.map(|v| serde_json::Value::Array(v).to_string())
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
