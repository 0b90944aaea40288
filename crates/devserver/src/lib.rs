//! Runs `wrangler dev` (real workerd) for the e2e suite and the benchmark driver: free ports,
//! its own process group (npx → node → workerd) so it can be stopped whole, and its output
//! captured line by line (DO logs included) for checks such as the wake log.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines wrangler printed.
pub type Log = Arc<Mutex<Vec<String>>>;

/// The workspace root (where wrangler.toml, node_modules and .dev.vars live).
pub fn project_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or(here)
}

/// A free loopback port (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `AUTH_SECRET`: from the environment variable `override_var` if set, else `.dev.vars`
/// (what `wrangler dev` hands the Worker), else `.dev.vars.example`.
pub fn read_secret(override_var: &str) -> Result<String, String> {
    if let Ok(s) = std::env::var(override_var) {
        return Ok(s);
    }
    let root = project_root();
    let text = std::fs::read_to_string(root.join(".dev.vars"))
        .or_else(|_| std::fs::read_to_string(root.join(".dev.vars.example")))
        .map_err(|_| "no .dev.vars: run `make setup` first".to_owned())?;
    text.lines()
        .find_map(|l| l.strip_prefix("AUTH_SECRET="))
        .map(|s| s.trim().trim_matches('"').to_owned())
        .ok_or_else(|| "AUTH_SECRET missing from .dev.vars".to_owned())
}

/// How to start one `wrangler dev`.
pub struct Options<'a> {
    pub port: u16,
    pub persist: &'a Path,
    /// Extra arguments (`--var K:V`, `--config …`).
    pub args: Vec<String>,
    /// Echo wrangler's lines to stderr when this environment variable is set.
    pub verbose_env: &'static str,
    /// Prefix for echoed lines.
    pub label: &'static str,
    /// Which lines to keep in the log.
    pub keep: fn(&str) -> bool,
}

/// Start `npx wrangler dev` from the project root in its own process group.
pub fn spawn(opts: &Options<'_>, log: &Log) -> std::io::Result<Child> {
    let inspector = free_port()?;
    let mut child = Command::new("npx")
        .args(["wrangler", "dev", "--ip", "127.0.0.1", "--port", &opts.port.to_string()])
        .args(["--inspector-port", &inspector.to_string(), "--show-interactive-dev-session=false", "--persist-to"])
        .arg(opts.persist)
        .args(&opts.args)
        .current_dir(project_root())
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let streams = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ];
    let verbose = std::env::var_os(opts.verbose_env).is_some();
    let (label, keep) = (opts.label, opts.keep);
    for stream in streams.into_iter().flatten() {
        let log = Arc::clone(log);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if verbose {
                    eprintln!("[{label}] {line}");
                }
                if keep(&line) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            }
        });
    }
    Ok(child)
}

/// Stop the whole process group (npx → node → workerd): SIGTERM, SIGKILL to whatever is left
/// after 10 s, and return only once no process of the group remains (up to 60 s more), so a
/// restart on the same port never meets the old workerd still listening. (procps `kill` needs
/// `--` before a negative pid.)
pub fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        let _ = Command::new("kill").args(["-s", sig, "--", &group]).stderr(Stdio::null()).status();
    };
    // The group exists while any member does. Reap our own child (the leader) as we go: a zombie
    // leader would keep the group "alive" for `kill -0`.
    let mut reaped = false;
    let mut group_gone = |within: Duration| {
        let deadline = std::time::Instant::now() + within;
        loop {
            if !reaped {
                reaped = matches!(child.try_wait(), Ok(Some(_)));
            }
            let alive = Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    signal("TERM");
    if !group_gone(Duration::from_secs(10)) {
        signal("KILL");
        if !group_gone(Duration::from_secs(60)) {
            eprintln!("devserver: process group {group} still alive 70 s after SIGTERM/SIGKILL");
        }
    }
    let _ = child.wait();
}

/// Wait until `port` on 127.0.0.1 can be bound again (the previous server released it), at
/// most `within`. True if it can.
pub fn wait_port_free(port: u16, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_the_worker_config() {
        assert!(project_root().join("wrangler.toml").exists());
    }

    #[test]
    fn kill_group_stops_every_member_of_the_group() {
        // A leader with a grandchild that ignores SIGTERM: both must be gone on return.
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'trap \"\" TERM; while :; do sleep 1; done' & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = format!("-{}", child.id());
        std::thread::sleep(Duration::from_millis(300));
        kill_group(&mut child);
        let alive = Command::new("kill").args(["-0", "--", &group]).stderr(Stdio::null()).status().unwrap().success();
        assert!(!alive, "a member of the group survived");
    }

    /// A port in use is never reported free. (Not "a free port is bindable again": on a busy
    /// machine any other process may take it between the two binds — that race flaked.)
    #[test]
    fn a_port_in_use_is_not_free() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(!wait_port_free(port, Duration::from_millis(300)));
        assert_ne!(free_port().unwrap(), port, "free_port handed out a port in use");
    }
}
