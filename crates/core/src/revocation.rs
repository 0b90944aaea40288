//! Revocation (docs/protocol.md §3): the rule, the frame and close code a revoked socket gets, and the
//! registry policy of the user's UserSession (which objects a `logout_all` must reach).
//!
//! The UserSession is the authority: the entry Worker asks it (`check`) before every WebSocket
//! connect, which records `(class, name)` in its registry; `logout_all` fans out
//! `revoke?userId=&before=` to every registered object, and each closes the user's sockets
//! opened with a token issued at or before `before` (the kit's built-in `revoke` op).

use std::collections::HashMap;

use crate::effects::Effects;
use crate::error::close;
use crate::route::DoClass;
use crate::time::Millis;

/// How many (class, object) pairs the registry keeps: the newest by last connect.
pub const MAX_REGISTRY: i64 = 200;
/// The frame a revoked socket gets before its 4001 close.
pub const LOGGED_OUT_FRAME: &str = r#"{"type":"logged_out"}"#;
/// Close code and reason of a revoked socket.
pub const CLOSE_CODE: u16 = close::LOGGED_OUT;
pub const CLOSE_REASON: &str = "logged out";

/// Whether a socket opened with a token issued at `token_iat_secs` (seconds) is revoked by a
/// `revoke` with `before_ms` (ms): issued at or before it.
pub fn revokes(token_iat_secs: i64, before_ms: Millis) -> bool {
    token_iat_secs.saturating_mul(1000) <= before_ms
}

/// `check?class=&name=`: remember (or refresh) that the user connects to `name` of `class`,
/// keeping the newest [`MAX_REGISTRY`] entries.
pub fn register(class: DoClass, name: &str, now: Millis) -> Effects {
    Effects::none()
        .store(
            "INSERT INTO registry (class, name, seen_at) VALUES (?, ?, ?) ON CONFLICT (class, name) DO UPDATE SET seen_at = excluded.seen_at",
            vec![class.as_str().into(), name.into(), now.into()],
        )
        .store(
            "DELETE FROM registry WHERE rowid NOT IN (SELECT rowid FROM registry ORDER BY seen_at DESC LIMIT ?)",
            vec![MAX_REGISTRY.into()],
        )
}

/// How long a registration this instance wrote stands without a rewrite: a connect to the
/// same object sooner writes nothing (no row, no commit before the check's answer).
pub const REFRESH_MS: Millis = 60_000;

/// The registrations this instance wrote, so the checks of a reconnect storm (every device
/// of a user back at once, after a deploy) cost one write per object and minute, not two
/// statements and a commit each.
///
/// Skipping is safe because a row's `seen_at` only gets older: `logout_all` still reaches
/// it (`seen_at <= at`). It must not be pruned meanwhile: every newer row was written by this
/// instance and is remembered, so while fewer than [`MAX_REGISTRY`] are remembered a
/// remembered row is among the newest kept. The memory is cleared at that size, and by
/// [`Registered::forget`] when `logout_all` deletes the rows.
#[derive(Debug, Default)]
pub struct Registered {
    written_at: HashMap<(DoClass, String), Millis>,
}

impl Registered {
    /// [`register`], unless this instance wrote the same row less than [`REFRESH_MS`] ago.
    pub fn register(&mut self, class: DoClass, name: &str, now: Millis) -> Effects {
        let key = (class, name.to_owned());
        if let Some(at) = self.written_at.get(&key) {
            if (*at..at.saturating_add(REFRESH_MS)).contains(&now) {
                return Effects::none();
            }
        }
        if self.written_at.len() >= usize::try_from(MAX_REGISTRY).unwrap_or(usize::MAX) {
            self.written_at.clear();
        }
        self.written_at.insert(key, now);
        register(class, name, now)
    }

    /// The rows were deleted (`logout_all`): the next connect to any object writes again.
    pub fn forget(&mut self) {
        self.written_at.clear();
    }
}

/// `logout_all` of `user` at `at`: every registered object (`(class, name)` rows seen at or
/// before `at`; never a UserSession) gets `revoke`, the entries go (new connects register
/// again), every socket here is closed 4001, and once the calls finished the object is
/// released so those sockets' TCP ends at once.
pub fn fan_out<'a>(user: &str, registry: impl IntoIterator<Item = (&'a str, &'a str)>, at: Millis) -> Effects {
    let mut effects = Effects::none().store("DELETE FROM registry WHERE seen_at <= ?", vec![at.into()]);
    for (class, name) in registry {
        if let Some(class) = DoClass::parse(class).filter(|c| *c != DoClass::UserSession) {
            effects = effects.call(class.binding(), name, format!("revoke?userId={user}&before={at}"));
        }
    }
    effects.close_all(CLOSE_CODE, CLOSE_REASON).release()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_issued_at_or_before_the_logout_is_revoked() {
        assert!(revokes(10, 10_000));
        assert!(!revokes(11, 10_999));
        assert!(revokes(0, 0));
    }

    #[test]
    fn fan_out_reaches_every_registered_object_but_sessions() {
        let rows = [("waddle", "w1"), ("user_session", "alice"), ("bogus", "x"), ("chat_room", "global")];
        let e = fan_out("alice", rows, 5_000);
        let ops: Vec<(&str, &str)> = e.calls.iter().map(|c| (c.binding, c.object.as_str())).collect();
        assert_eq!(ops, vec![("WADDLE", "w1"), ("CHAT_ROOM", "global")]);
        assert_eq!(e.calls.first().map(|c| c.op.as_str()), Some("revoke?userId=alice&before=5000"));
        assert_eq!(e.close_all.as_ref().map(|c| c.code), Some(4001));
        assert!(e.release);
        assert_eq!(e.store.len(), 1);
        assert_eq!(register(DoClass::Waddle, "w1", 1).store.len(), 2);
    }

    #[test]
    fn a_registration_is_written_once_per_refresh_window() {
        let mut registered = Registered::default();
        assert_eq!(registered.register(DoClass::Channel, "c1", 1_000).store.len(), 2);
        assert!(registered.register(DoClass::Channel, "c1", 1_000).store.is_empty());
        assert!(registered.register(DoClass::Channel, "c1", 1_000 + REFRESH_MS - 1).store.is_empty());
        // Another object, or the same name in another class, is its own row.
        assert_eq!(registered.register(DoClass::Waddle, "c1", 2_000).store.len(), 2);
        assert_eq!(registered.register(DoClass::Channel, "c2", 2_000).store.len(), 2);
        // Due again: written, and the window restarts from there.
        let again = registered.register(DoClass::Channel, "c1", 1_000 + REFRESH_MS);
        assert_eq!(again.store.first().map(|s| s.binds.get(2).cloned()), Some(Some((1_000 + REFRESH_MS).into())));
        assert!(registered.register(DoClass::Channel, "c1", 2 * REFRESH_MS).store.is_empty());
        // A clock that went back never skips.
        assert_eq!(registered.register(DoClass::Channel, "c1", 500).store.len(), 2);
    }

    #[test]
    fn logout_all_and_a_full_memory_make_every_object_write_again() {
        let mut registered = Registered::default();
        registered.register(DoClass::Channel, "c1", 0);
        registered.forget();
        assert_eq!(registered.register(DoClass::Channel, "c1", 1).store.len(), 2);
        // MAX_REGISTRY remembered rows: the next new one clears the memory, so no remembered row
        // can be one the prune deleted.
        for i in 0..MAX_REGISTRY - 1 {
            registered.register(DoClass::ChatRoom, &format!("r{i}"), 2);
        }
        assert!(registered.register(DoClass::Channel, "c1", 3).store.is_empty());
        assert_eq!(registered.register(DoClass::Channel, "new", 3).store.len(), 2);
        assert_eq!(registered.register(DoClass::Channel, "c1", 4).store.len(), 2);
    }
}
