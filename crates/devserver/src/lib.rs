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

/// Stop the whole process group: SIGTERM, then SIGKILL after 5 s. (procps `kill` needs `--`
/// before a negative pid.)
pub fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-s", "TERM", "--", &group]).stderr(Stdio::null()).status();
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).stderr(Stdio::null()).status();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_the_worker_config() {
        assert!(project_root().join("wrangler.toml").exists());
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
