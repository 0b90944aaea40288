//! Mint a dev token: `mint-token <user> [--name "Display Name"] [--admin] [--ttl seconds]`.
//! The secret comes from `$AUTH_SECRET`, else `.dev.vars` in the current directory.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use edge_realtime_core::auth::{mint, Claims};
use edge_realtime_core::names::is_valid_name;

fn secret() -> Option<String> {
    if let Ok(s) = std::env::var("AUTH_SECRET") {
        return Some(s);
    }
    let text = std::fs::read_to_string(".dev.vars").ok()?;
    text.lines().find_map(|l| l.strip_prefix("AUTH_SECRET=")).map(|s| s.trim().trim_matches('"').to_owned())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut user = None;
    let mut name = None;
    let mut admin = false;
    let mut ttl: i64 = 24 * 3600;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next().filter(|n| !n.is_empty()),
            "--admin" => admin = true,
            "--ttl" => ttl = args.next().and_then(|t| t.parse().ok()).unwrap_or(ttl),
            other if user.is_none() => user = Some(other.to_owned()),
            other => {
                eprintln!("unexpected argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(user) = user.filter(|u| is_valid_name(u)) else {
        eprintln!("usage: mint-token <user id: [A-Za-z0-9_.-]{{1,64}}> [--name NAME] [--admin] [--ttl SECONDS]");
        return ExitCode::from(2);
    };
    let Some(secret) = secret() else {
        eprintln!("no AUTH_SECRET in the environment or .dev.vars (run `make setup`)");
        return ExitCode::from(2);
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let claims = Claims {
        sub: user,
        iat: now,
        exp: now + ttl.max(1),
        name,
        roles: if admin { vec!["admin".to_owned()] } else { Vec::new() },
    };
    match mint(&claims, secret.as_bytes()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("could not mint: {e}");
            ExitCode::FAILURE
        }
    }
}
