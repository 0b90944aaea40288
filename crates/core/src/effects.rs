//! What an object decides, as data: the one outcome type every hook of a kit object returns
//! (`src/kit/object.rs` executes it), and the typed internal operations an object serves.
//!
//! An [`Effects`] value is carried out in one fixed order — **store → send → close → timers →
//! calls** — so durability before broadcast is a property of the kit, not of each object: if a
//! store fails, nothing is sent, the socket is closed 1011 (an HTTP call gets 500), and the
//! object's memory is rebuilt from storage. Pure cores build `Effects` and are tested natively.

use crate::time::Millis;

/// A value bound into a SQL statement (the core-side mirror of the runtime's SQL values).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One SQL statement to run. The SQL text is a constant (bound parameters only, never
/// formatted), so a core cannot build an injection by accident.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: &'static str,
    pub binds: Vec<Value>,
}

/// Who receives a frame. "This" is the socket whose event it is (none for HTTP calls and
/// timers, where `This` is dropped and `Others` means everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    This,
    All,
    Others,
    /// Every socket accepted with this tag (e.g. `u:<userId>`: all devices of one user).
    Tag(String),
}

/// One frame to send (exact wire JSON, built by the core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub to: To,
    pub frame: String,
}

/// Close the event's socket after the sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

/// A change to the object's named timers (one runtime alarm points at the earliest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    Set { name: String, at: Millis },
    Cancel { name: String },
}

/// A `POST` to another Durable Object after this event's state is stored (best effort: a
/// failure is logged, never undoes what was stored). `op` is the path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The wrangler.toml binding, e.g. `USER_SESSION`.
    pub binding: &'static str,
    /// The object's name (`idFromName`).
    pub object: String,
    pub op: String,
    /// The request body (JSON text), if any.
    pub body: Option<String>,
    /// How many times the kit tries (a failure or a non-200 answer is logged and tried again
    /// at once, at most this many times in all; at least 1).
    pub tries: u8,
    /// Continuation: when set, the answer (or the last failure) is handed to the object's
    /// `on_reply` hook with this text, in the same event (the origin socket is still `This`).
    pub then: Option<String>,
    /// Ordering lane: calls with the same key go out one at a time (the next once the previous
    /// answered or gave up), in the order the events asked for them. `None`: at once.
    pub order: Option<String>,
}

impl Call {
    /// A call with no body, tried once, answer ignored (what [`Effects::call`] adds).
    pub fn new(binding: &'static str, object: impl Into<String>, op: impl Into<String>) -> Self {
        Self { binding, object: object.into(), op: op.into(), body: None, tries: 1, then: None, order: None }
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn tries(mut self, tries: u8) -> Self {
        self.tries = tries.max(1);
        self
    }
    pub fn then(mut self, then: impl Into<String>) -> Self {
        self.then = Some(then.into());
        self
    }
    pub fn ordered(mut self, lane: impl Into<String>) -> Self {
        self.order = Some(lane.into());
        self
    }
}

/// Everything one hook decided. Build it with the chaining methods. Order: store → send →
/// close → close_all → timers → calls → release.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub store: Vec<Statement>,
    pub sends: Vec<Send>,
    pub close: Option<Close>,
    /// Close every socket of the object (after `close`). They are not announced gone at once:
    /// their close events do that (or [`Effects::release`] drops them).
    pub close_all: Option<Close>,
    pub timers: Vec<Timer>,
    pub calls: Vec<Call>,
    /// After every call finished: flush storage, then reset the object (`ctx.abort()`) so the
    /// sockets it closed lose their TCP now — skipped while any socket is still open.
    pub release: bool,
}

impl Effects {
    /// Nothing to do.
    pub fn none() -> Self {
        Self::default()
    }
    /// Whether a frame's effects may wait for the other frames of the same turn, so their writes
    /// share one SQLite transaction (the kit's coalesced writes): they store something and
    /// otherwise only send. A close, timers, calls or a release run at once, after every
    /// earlier coalesced write and send.
    pub fn coalescible(&self) -> bool {
        !self.store.is_empty()
            && self.close.is_none()
            && self.close_all.is_none()
            && self.timers.is_empty()
            && self.calls.is_empty()
            && !self.release
    }
    pub fn store(mut self, sql: &'static str, binds: Vec<Value>) -> Self {
        self.store.push(Statement { sql, binds });
        self
    }
    pub fn send(mut self, to: To, frame: impl Into<String>) -> Self {
        self.sends.push(Send { to, frame: frame.into() });
        self
    }
    pub fn to_self(self, frame: impl Into<String>) -> Self {
        self.send(To::This, frame)
    }
    pub fn to_all(self, frame: impl Into<String>) -> Self {
        self.send(To::All, frame)
    }
    pub fn to_others(self, frame: impl Into<String>) -> Self {
        self.send(To::Others, frame)
    }
    pub fn close(mut self, code: u16, reason: impl Into<String>) -> Self {
        self.close = Some(Close { code, reason: crate::error::clip_reason(&reason.into()) });
        self
    }
    pub fn close_all(mut self, code: u16, reason: impl Into<String>) -> Self {
        self.close_all = Some(Close { code, reason: crate::error::clip_reason(&reason.into()) });
        self
    }
    pub fn release(mut self) -> Self {
        self.release = true;
        self
    }
    pub fn set_timer(mut self, name: impl Into<String>, at: Millis) -> Self {
        self.timers.push(Timer::Set { name: name.into(), at });
        self
    }
    pub fn cancel_timer(mut self, name: impl Into<String>) -> Self {
        self.timers.push(Timer::Cancel { name: name.into() });
        self
    }
    pub fn call(mut self, binding: &'static str, object: impl Into<String>, op: impl Into<String>) -> Self {
        self.calls.push(Call::new(binding, object, op));
        self
    }
    /// Add a fully described [`Call`] (body, tries, continuation).
    pub fn call_with(mut self, call: Call) -> Self {
        self.calls.push(call);
        self
    }
    /// `self`, then `other` (each list keeps its order; `other`'s close wins).
    pub fn and(mut self, other: Effects) -> Self {
        self.store.extend(other.store);
        self.sends.extend(other.sends);
        self.close = other.close.or(self.close);
        self.close_all = other.close_all.or(self.close_all);
        self.timers.extend(other.timers);
        self.calls.extend(other.calls);
        self.release |= other.release;
        self
    }
    /// The frames addressed to `to`, in order (for tests).
    pub fn frames_to(&self, to: &To) -> Vec<&str> {
        self.sends.iter().filter(|s| s.to == *to).map(|s| s.frame.as_str()).collect()
    }
}

/// An object's internal operations: what the route table forwards to and the kit dispatches
/// on. Implemented by [`ops!`]; the entry Worker's route table names `GameOp::Socket`, not a
/// string, so route → handler is one compile-checked hop.
pub trait Op: Sized + Copy + 'static {
    /// The internal path segment (`https://do.internal/<path>`).
    fn path(&self) -> &'static str;
    fn parse(path: &str) -> Option<Self>;
    /// Whether this op upgrades to a WebSocket (the kit accepts it and calls `on_connect`).
    fn is_websocket(&self) -> bool;
}

/// Declare an object's operations:
///
/// ```
/// edge_realtime_core::ops! {
///     /// GameServer's operations.
///     pub enum GameOp {
///         Socket = "ws" (websocket),
///         State = "state",
///     }
/// }
/// use edge_realtime_core::effects::Op;
/// assert_eq!(GameOp::parse("state"), Some(GameOp::State));
/// assert!(GameOp::Socket.is_websocket());
/// ```
#[macro_export]
macro_rules! ops {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $path:literal $(($kind:ident))?),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }
        impl $crate::effects::Op for $name {
            fn path(&self) -> &'static str {
                match self { $(Self::$variant => $path,)+ }
            }
            fn parse(path: &str) -> Option<Self> {
                match path { $($path => Some(Self::$variant),)+ _ => None }
            }
            fn is_websocket(&self) -> bool {
                match self { $(Self::$variant => $crate::ops!(@websocket $($kind)?),)+ }
            }
        }
    };
    (@websocket websocket) => { true };
    (@websocket) => { false };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::ops! {
        enum TestOp {
            Socket = "ws" (websocket),
            Get = "get",
        }
    }

    #[test]
    fn ops_round_trip() {
        for op in [TestOp::Socket, TestOp::Get] {
            assert_eq!(TestOp::parse(op.path()), Some(op));
        }
        assert_eq!(TestOp::parse("nope"), None);
        assert!(TestOp::Socket.is_websocket());
        assert!(!TestOp::Get.is_websocket());
    }

    #[test]
    fn only_a_store_with_sends_is_coalescible() {
        let post = || Effects::none().store("INSERT INTO t VALUES (?)", vec![1.into()]).to_all("a").to_self("b");
        assert!(post().coalescible());
        assert!(Effects::none().store("DELETE FROM t", vec![]).coalescible());
        assert!(!Effects::none().to_all("a").coalescible(), "nothing to store: nothing to share");
        assert!(!post().close(1008, "x").coalescible());
        assert!(!post().and(Effects { close_all: Some(Close { code: 1000, reason: String::new() }), ..Effects::none() }).coalescible());
        assert!(!post().set_timer("prune", 5).coalescible());
        assert!(!post().and(Effects { release: true, ..Effects::none() }).coalescible());
        let call = Call { binding: "B", object: "o".into(), op: "p".into(), body: None, tries: 1, then: None, order: None };
        assert!(!post().and(Effects { calls: vec![call], ..Effects::none() }).coalescible());
    }

    #[test]
    fn effects_chain_in_order() {
        let e = Effects::none()
            .store("INSERT INTO t VALUES (?)", vec![1.into()])
            .to_all("a")
            .to_self("b")
            .and(Effects::none().to_all("c").close(1000, "x".repeat(200)));
        assert_eq!(e.store.len(), 1);
        assert_eq!(e.frames_to(&To::All), vec!["a", "c"]);
        assert_eq!(e.frames_to(&To::This), vec!["b"]);
        assert_eq!(e.close.map(|c| c.reason.len()), Some(123));
        assert_eq!(Value::from(None::<&str>), Value::Null);
    }
}
