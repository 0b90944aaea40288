//! Operations (docs/operations.md): the per-object counters the kit keeps for every object, when
//! they are flushed to storage, the admin stats body, and the structured JSON log lines.
//!
//! Counting is in memory (a field increment per frame); the counters reach storage as one
//! `_kit_stats` row, written at the end of an event (frame, close, request, alarm) when they
//! changed and the last write is at least the flush interval old, and always on the stats
//! request and before the kit resets the object. What an eviction or a crash loses is the
//! counts since the last write (docs/operations.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// The kit's built-in internal op for `GET /api/admin/stats/{class}/{name}` (served by every
/// object without code of its own; it never creates state: see docs/operations.md).
pub const STATS_OP: &str = "kit-stats";

/// Least time between two writes of the counters at the end of events (var
/// `STATS_FLUSH_INTERVAL_MS`; `0`: after every event that changed them).
pub const DEFAULT_FLUSH_INTERVAL_MS: Millis = 60_000;

/// The kit's own tables, never counted in `storageRows` (they hold the kit's bookkeeping).
pub const KIT_TABLES: &[&str] = &["_schema", "_schedule", "_kit_stats"];

/// `CREATE` statement of the counters' row.
pub const STATS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _kit_stats (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL)";

/// Upsert of the counters' row (one bound JSON text).
pub const STATS_UPSERT: &str =
    "INSERT INTO _kit_stats (id, json) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json";

/// The persisted counters of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Counters {
    pub sockets_accepted: u64,
    /// Sockets announced gone, by the close code that ended them.
    pub sockets_closed: BTreeMap<u16, u64>,
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_rejected: u64,
    /// Constructor runs that rebuilt the object from storage.
    pub wakes: u64,
    pub alarm_runs: u64,
    /// ms since the epoch of the last frame, request or alarm.
    pub last_activity: Option<Millis>,
}

/// The stored row: the counters and when they were flushed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Stored {
    counters: Counters,
    flushed_at: Option<Millis>,
}

/// The counters in memory, with what the flush policy needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracker {
    counters: Counters,
    /// Changed since the last flush.
    dirty: bool,
    flushed_at: Option<Millis>,
}

impl Tracker {
    /// From the stored row's JSON (`None`: never flushed). An unreadable row starts at zero
    /// rather than failing the object (the second value is the reason, for the log).
    pub fn restore(stored: Option<&str>) -> (Self, Option<String>) {
        let Some(text) = stored else { return (Self::default(), None) };
        match serde_json::from_str::<Stored>(text) {
            Ok(s) => (Self { counters: s.counters, dirty: false, flushed_at: s.flushed_at }, None),
            Err(e) => (Self::default(), Some(e.to_string())),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// A text frame or binary frame arrived (`now` becomes the last activity).
    pub fn frame_in(&mut self, now: Millis) {
        self.counters.frames_in += 1;
        self.touch(now);
    }

    /// A frame was refused (closed for it, or answered with an in-band error).
    pub fn frame_rejected(&mut self) {
        self.counters.frames_rejected += 1;
        self.dirty = true;
    }

    /// `n` frame deliveries (one per recipient socket).
    pub fn frames_out(&mut self, n: u64) {
        if n > 0 {
            self.counters.frames_out += n;
            self.dirty = true;
        }
    }

    /// An HTTP op reached the object (a socket upgrade included).
    pub fn request(&mut self, now: Millis) {
        self.touch(now);
    }

    pub fn socket_accepted(&mut self) {
        self.counters.sockets_accepted += 1;
        self.dirty = true;
    }

    /// A socket was announced gone with `code`.
    pub fn socket_closed(&mut self, code: u16) {
        *self.counters.sockets_closed.entry(code).or_insert(0) += 1;
        self.dirty = true;
    }

    pub fn wake(&mut self) {
        self.counters.wakes += 1;
        self.dirty = true;
    }

    pub fn alarm(&mut self, now: Millis) {
        self.counters.alarm_runs += 1;
        self.touch(now);
    }

    fn touch(&mut self, now: Millis) {
        self.counters.last_activity = Some(self.counters.last_activity.map_or(now, |t| t.max(now)));
        self.dirty = true;
    }

    /// Whether an event ending at `now` should flush: something changed and at least
    /// `interval` passed since the last flush (never flushed: yes).
    pub fn due(&self, now: Millis, interval: Millis) -> bool {
        self.dirty && self.flushed_at.is_none_or(|t| now.saturating_sub(t) >= interval)
    }

    /// The row to store now (bind it to [`STATS_UPSERT`]); the counters count as flushed.
    pub fn flush(&mut self, now: Millis) -> String {
        self.dirty = false;
        self.flushed_at = Some(now);
        let stored = Stored { counters: self.counters.clone(), flushed_at: Some(now) };
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// The write of [`Tracker::flush`]'s row failed: still dirty (tried again after the interval).
    pub fn flush_failed(&mut self) {
        self.dirty = true;
    }
}

/// Whether a hook's answer to a frame is a refusal answered in-band (`framesRejected`): it
/// stores nothing and only tells the sender an error (`{"type":"error",…}`, the shape of
/// `Reject::error_frame` and of chat's `rate_limited`). Objects turn in-band rejections into
/// such a send themselves, so the kit recognises the answer, not the code path.
pub fn is_in_band_refusal(effects: &crate::effects::Effects) -> bool {
    effects.store.is_empty()
        && !effects.sends.is_empty()
        && effects.sends.iter().all(|s| s.to == crate::effects::To::This)
        && effects.sends.iter().any(|s| s.frame.contains(r#""type":"error""#))
}

/// The body of `GET /api/admin/stats/{class}/{name}` (docs/operations.md), exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsBody<'a> {
    pub class: &'a str,
    pub name: &'a str,
    pub open_sockets: u64,
    pub sockets_accepted: u64,
    pub sockets_closed: &'a BTreeMap<u16, u64>,
    pub frames_in: u64,
    pub frames_out: u64,
    pub frames_rejected: u64,
    pub wakes: u64,
    pub alarm_runs: u64,
    pub storage_rows: u64,
    pub last_activity: Option<Millis>,
}

impl<'a> StatsBody<'a> {
    pub fn new(class: &'a str, name: &'a str, c: &'a Counters, open_sockets: u64, storage_rows: u64) -> Self {
        Self {
            class,
            name,
            open_sockets,
            sockets_accepted: c.sockets_accepted,
            sockets_closed: &c.sockets_closed,
            frames_in: c.frames_in,
            frames_out: c.frames_out,
            frames_rejected: c.frames_rejected,
            wakes: c.wakes,
            alarm_runs: c.alarm_runs,
            storage_rows,
            last_activity: c.last_activity,
        }
    }
}

/// Whether a table from `sqlite_master` is the object's own (counted in `storageRows`): not
/// the runtime's ([`is_internal_table`]), not the kit's ([`KIT_TABLES`]).
pub fn is_object_table(name: &str) -> bool {
    !is_internal_table(name) && !KIT_TABLES.contains(&name)
}

/// Whether a table belongs to the runtime (`_cf_*`; locally also miniflare's `__miniflare_*`,
/// which records the name an object was addressed by) or to SQLite (`sqlite_*`). An object
/// with only these has no state of its own.
pub fn is_internal_table(name: &str) -> bool {
    name.starts_with("_cf_") || name.starts_with("sqlite_") || name.starts_with("__miniflare")
}

/// `SELECT count(*) AS n FROM "<table>"`, the name quoted as an SQL identifier.
pub fn count_rows_sql(table: &str) -> String {
    format!("SELECT count(*) AS n FROM \"{}\"", table.replace('"', "\"\""))
}

// ------------------------------------------------------------------ structured log lines

/// The request id of an entry-Worker log line: the `cf-ray` header if it looks like one
/// (1–64 of `[A-Za-z0-9-]`: a client-sent header is never logged as arbitrary text), else none
/// (the Worker generates one).
pub fn request_id_from(cf_ray: Option<&str>) -> Option<String> {
    cf_ray
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
}

/// `{"event":"request",...}`: one per HTTP request the entry Worker answered. `route` is the
/// route template (never the raw path or query: a `?token=` never reaches the log).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestLine<'a> {
    pub event: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: Option<&'static str>,
    pub class: Option<&'static str>,
    pub object: Option<&'a str>,
    pub status: u16,
    pub duration_ms: Millis,
    pub user_id: Option<&'a str>,
}

/// A socket lifecycle line (`socket_open`, `socket_close` with `code`, `socket_error`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketLine<'a> {
    pub event: &'static str,
    pub class: &'a str,
    pub object: Option<&'a str>,
    pub user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

/// `{"event":"wake",...}`: a constructor rebuilt the object from storage (`wakes` so far).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WakeLine<'a> {
    pub event: &'static str,
    pub class: &'a str,
    pub object: Option<&'a str>,
    pub wakes: u64,
}

/// `{"event":"alarm",...}`: an alarm run and the timers that were due.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmLine<'a> {
    pub event: &'static str,
    pub class: &'a str,
    pub object: Option<&'a str>,
    pub timers: &'a [String],
}

/// `{"event":"debug","message":...}`: a lifecycle detail (var `DEBUG_WAKE=1` only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DebugLine<'a> {
    pub event: &'static str,
    pub message: &'a str,
}

/// One log line as JSON text.
pub fn line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// What the wake line of `class` `object` starts with (the e2e suite looks for it).
pub fn wake_prefix(class: &str, object: &str) -> String {
    let line = line(&WakeLine { event: "wake", class, object: Some(object), wakes: 0 });
    line.split(",\"wakes\"").next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_marks_dirty_and_last_activity_never_goes_back() {
        let mut t = Tracker::default();
        assert!(!t.is_dirty());
        t.frame_in(2_000);
        t.frame_in(1_000);
        t.frames_out(3);
        t.frames_out(0);
        t.frame_rejected();
        t.socket_accepted();
        t.socket_closed(4000);
        t.socket_closed(4000);
        t.socket_closed(1000);
        t.wake();
        t.alarm(1_500);
        let c = t.counters();
        assert_eq!((c.frames_in, c.frames_out, c.frames_rejected, c.sockets_accepted), (2, 3, 1, 1));
        assert_eq!(c.sockets_closed, BTreeMap::from([(1000, 1), (4000, 2)]));
        assert_eq!((c.wakes, c.alarm_runs, c.last_activity), (1, 1, Some(2_000)));
        assert!(t.is_dirty());
    }

    #[test]
    fn flush_policy_once_per_interval_and_only_when_dirty() {
        let mut t = Tracker::default();
        assert!(!t.due(0, 60_000), "nothing changed: no write");
        t.wake();
        assert!(t.due(0, 60_000), "never flushed: the first event flushes");
        let _ = t.flush(10_000);
        assert!(!t.due(10_000, 60_000));
        t.frame_in(10_001);
        assert!(!t.due(69_999, 60_000), "within the interval: memory only");
        assert!(t.due(70_000, 60_000));
        let _ = t.flush(70_000);
        t.flush_failed();
        assert!(t.is_dirty() && t.due(130_000, 60_000), "a failed write is tried again");
    }

    #[test]
    fn flushed_row_restores_the_counters_and_the_flush_time() {
        let mut t = Tracker::default();
        t.wake();
        t.frame_in(5);
        t.socket_closed(1001);
        let row = t.flush(7);
        let (back, error) = Tracker::restore(Some(&row));
        assert_eq!(error, None);
        assert_eq!(back.counters(), t.counters());
        assert!(!back.is_dirty());
        assert!(!back.due(8, 60_000));
        let mut woken = back;
        woken.wake();
        assert!(!woken.due(59_999, 60_000) && woken.due(60_007, 60_000), "the interval spans wakes");
        assert_eq!(Tracker::restore(None), (Tracker::default(), None));
        let (zero, why) = Tracker::restore(Some("not json"));
        assert_eq!(zero, Tracker::default());
        assert!(why.is_some_and(|w| !w.is_empty()));
    }

    #[test]
    fn in_band_refusals_are_error_answers_to_the_sender_only() {
        use crate::effects::{Effects, To};
        use crate::frame::Reject;
        let refusal = Effects::none().to_self(Reject::error_frame("invalid_content", "content must not be empty"));
        assert!(is_in_band_refusal(&refusal));
        assert!(!is_in_band_refusal(&Effects::none().to_self(r#"{"type":"pong"}"#)));
        assert!(!is_in_band_refusal(&Effects::none()));
        let broadcast = Effects::none().send(To::All, r#"{"type":"message","content":"\"type\":\"error\""}"#);
        assert!(!is_in_band_refusal(&broadcast), "a broadcast is no refusal");
        let stored = Effects::none().store("INSERT", vec![]).to_self(Reject::error_frame("x", "y"));
        assert!(!is_in_band_refusal(&stored), "a store means the frame did something");
    }

    #[test]
    fn stats_body_has_the_documented_shape() {
        let mut t = Tracker::default();
        t.socket_accepted();
        t.socket_closed(4000);
        t.frame_in(1_700_000_000_000);
        let body = serde_json::to_value(StatsBody::new("chat_room", "r1", t.counters(), 2, 5)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "class": "chat_room", "name": "r1", "openSockets": 2, "socketsAccepted": 1,
                "socketsClosed": {"4000": 1}, "framesIn": 1, "framesOut": 0, "framesRejected": 0,
                "wakes": 0, "alarmRuns": 0, "storageRows": 5, "lastActivity": 1_700_000_000_000_i64
            })
        );
        let zeros = serde_json::to_value(StatsBody::new("counter", "x", &Counters::default(), 0, 0)).unwrap();
        assert_eq!(zeros["lastActivity"], serde_json::Value::Null);
        assert_eq!(zeros["socketsClosed"], serde_json::json!({}));
    }

    #[test]
    fn tables_counted_and_quoted() {
        assert!(is_object_table("messages"));
        for t in ["_cf_KV", "_cf_METADATA", "sqlite_sequence", "__miniflare_do_name", "_schema", "_schedule", "_kit_stats"] {
            assert!(!is_object_table(t), "{t}");
        }
        assert!(is_internal_table("_cf_KV") && !is_internal_table("_schema"));
        assert_eq!(count_rows_sql("a\"b"), "SELECT count(*) AS n FROM \"a\"\"b\"");
    }

    #[test]
    fn request_ids_only_from_ray_like_headers() {
        assert_eq!(request_id_from(Some("8e2f1c3a9b7d4e21-AMS")).as_deref(), Some("8e2f1c3a9b7d4e21-AMS"));
        assert_eq!(request_id_from(Some("Bearer eyJhbGciOi.x.y")), None);
        assert_eq!(request_id_from(Some("")), None);
        assert_eq!(request_id_from(Some(&"a".repeat(65))), None);
        assert_eq!(request_id_from(None), None);
    }

    #[test]
    fn log_lines_are_one_json_object_with_fixed_fields() {
        let r = line(&RequestLine {
            event: "request",
            request_id: "id1",
            method: "GET",
            route: Some("/api/chat/:room"),
            class: Some("chat_room"),
            object: Some("r1"),
            status: 101,
            duration_ms: 3,
            user_id: Some("alice"),
        });
        assert_eq!(
            r,
            r#"{"event":"request","requestId":"id1","method":"GET","route":"/api/chat/:room","class":"chat_room","object":"r1","status":101,"durationMs":3,"userId":"alice"}"#
        );
        let open = line(&SocketLine { event: "socket_open", class: "ChatRoom", object: Some("r1"), user_id: "alice", code: None });
        assert_eq!(open, r#"{"event":"socket_open","class":"ChatRoom","object":"r1","userId":"alice"}"#);
        let close = line(&SocketLine { event: "socket_close", class: "ChatRoom", object: None, user_id: "a", code: Some(4000) });
        assert_eq!(close, r#"{"event":"socket_close","class":"ChatRoom","object":null,"userId":"a","code":4000}"#);
        let wake = line(&WakeLine { event: "wake", class: "ChatRoom", object: Some("r1"), wakes: 3 });
        assert!(wake.starts_with(&wake_prefix("ChatRoom", "r1")));
        assert_eq!(wake_prefix("ChatRoom", "r1"), r#"{"event":"wake","class":"ChatRoom","object":"r1""#);
        assert!(!wake.starts_with(&wake_prefix("ChatRoom", "r")), "a name is matched whole");
    }
}
