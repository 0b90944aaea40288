//! The Durable Object classes, one file each, all hosted by the kit base
//! ([`crate::kit::object`]): each file is its protocol over its core.

pub mod channel;
pub mod chat;
pub mod counter;
pub mod game;
pub mod rate_limiter;
pub mod sharding;
pub mod user_session;
pub mod voice;
pub mod waddle;

use serde::Deserialize;
use worker::{Request, State};

use edge_realtime_core::error::ApiError;
use edge_realtime_core::revocation;
use edge_realtime_core::query::parse_seq;

use crate::kit::{self, http};

/// Every attachment carries the `iat` of the token its socket was opened with.
#[derive(Deserialize)]
struct TokenIat {
    #[serde(default)]
    token_iat: i64,
}

/// `POST /revoke?userId=&before=` (internal, from UserSession's logout_all fan-out; the kit's
/// built-in op): close every socket of `userId` the rule of `core::revocation` revokes, with
/// its frame and 4001.
/// Returns the sockets it closed.
pub fn revoke_sockets(state: &State, req: &Request) -> Result<Vec<worker::WebSocket>, ApiError> {
    let user = http::query_param(req, "userId")
        .filter(|u| edge_realtime_core::names::is_valid_name(u))
        .ok_or_else(|| ApiError::bad_request("invalid_name", "userId required"))?;
    let before = parse_seq("before", http::query_param(req, "before").as_deref())?.unwrap_or(i64::MAX);
    let mut closed = Vec::new();
    for ws in kit::sockets(state, Some(&format!("u:{user}"))) {
        let iat = kit::attachment::<TokenIat>(&ws).map_or(0, |a| a.token_iat);
        if revocation::revokes(iat, before) {
            let _ = kit::send(&ws, revocation::LOGGED_OUT_FRAME);
            kit::close(&ws, revocation::CLOSE_CODE, revocation::CLOSE_REASON);
            closed.push(ws);
        }
    }
    Ok(closed)
}
