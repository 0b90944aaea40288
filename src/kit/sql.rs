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

/// The bindings as a JSON array, or `None` if one is a blob (or a float JSON cannot write),
/// written straight from the values (no `serde_json::Value` per statement).
fn binds_json(binds: &[SqlStorageValue]) -> Option<String> {
    let writable = binds.iter().all(|v| match v {
        SqlStorageValue::Blob(_) => false,
        SqlStorageValue::Float(f) => f.is_finite(),
        _ => true,
    });
    if !writable {
        return None;
    }
    serde_json::to_string(&Binds(binds)).ok()
}

/// [`binds_json`]'s serializer (only called on writable bindings).
struct Binds<'a>(&'a [SqlStorageValue]);

impl serde::Serialize for Binds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            match v {
                SqlStorageValue::Null | SqlStorageValue::Blob(_) => seq.serialize_element(&())?,
                SqlStorageValue::Boolean(b) => seq.serialize_element(b)?,
                SqlStorageValue::Integer(i) => seq.serialize_element(i)?,
                SqlStorageValue::Float(f) => seq.serialize_element(f)?,
                SqlStorageValue::String(s) => seq.serialize_element(s)?,
            }
        }
        seq.end()
    }
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

/// Objects get their tables once per schema instead of on every wake: the constructor
/// (`kit::object::Host::new`) reads the stored schema version (a hash of the statements,
/// [`schema_version`]) in the same query as the kit's counters, and runs [`apply_schema`] only
/// if it differs. A deploy that changes the statements changes the version, so they run again
/// (they must stay idempotent: `IF NOT EXISTS`).
/// Run `statements` (idempotent `CREATE … IF NOT EXISTS`) and store their version.
pub fn apply_schema(sql: &SqlStorage, statements: &[&str]) {
    for statement in statements {
        let _ = exec(sql, statement, vec![]);
    }
    let _ = exec(sql, "CREATE TABLE IF NOT EXISTS _schema (id INTEGER PRIMARY KEY CHECK (id = 1), version TEXT NOT NULL)", vec![]);
    let _ = exec(
        sql,
        "INSERT INTO _schema (id, version) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        vec![SqlStorageValue::String(schema_version(statements))],
    );
}

/// The tables in `sqlite_master` (the runtime's `_cf_*` included; filter with `core::ops`).
pub fn table_names(sql: &SqlStorage) -> Result<Vec<String>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Table {
        name: String,
    }
    let tables: Vec<Table> = rows(sql, "SELECT name FROM sqlite_master WHERE type = 'table'", vec![])?;
    Ok(tables.into_iter().map(|t| t.name).collect())
}

/// Whether the object stores anything: a table besides the runtime's and SQLite's own.
pub fn has_tables(sql: &SqlStorage) -> bool {
    // Unreadable: assume state exists (the constructor then creates its tables as before).
    table_names(sql).map_or(true, |names| names.iter().any(|n| !edge_realtime_core::ops::is_internal_table(n)))
}

/// FNV-1a over the statements (stable across builds and platforms, unlike `DefaultHasher`).
pub fn schema_version(statements: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in statements.iter().flat_map(|s| s.bytes().chain(std::iter::once(0))) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::{binds_json, schema_version};
    use worker::SqlStorageValue as V;

    #[test]
    fn bindings_are_the_json_array_they_always_were() {
        let binds = vec![
            V::Null,
            V::Boolean(true),
            V::Integer(-9_007_199_254_740_991),
            V::Float(1.5),
            V::Float(-0.0),
            V::String("quote \" backslash \\ 👋 \u{1}".into()),
        ];
        let reference = serde_json::json!([null, true, -9_007_199_254_740_991i64, 1.5, -0.0, "quote \" backslash \\ 👋 \u{1}"]);
        assert_eq!(binds_json(&binds).as_deref(), Some(reference.to_string().as_str()));
        assert_eq!(binds_json(&[]).as_deref(), Some("[]"));
        assert_eq!(binds_json(&[V::Float(f64::NAN)]), None, "NaN takes workers-rs's path");
        assert_eq!(binds_json(&[V::Blob(vec![1])]), None, "blobs take workers-rs's path");
    }

    #[test]
    fn schema_version_follows_the_statements() {
        let a = schema_version(&["CREATE TABLE a (x)", "CREATE TABLE b (y)"]);
        assert_eq!(a, schema_version(&["CREATE TABLE a (x)", "CREATE TABLE b (y)"]));
        assert_ne!(a, schema_version(&["CREATE TABLE a (x)"]));
        assert_ne!(a, schema_version(&["CREATE TABLE a (x)CREATE TABLE b (y)"]), "statement boundaries count");
        assert_eq!(a.len(), 16);
    }
}
