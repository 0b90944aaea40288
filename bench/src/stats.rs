//! Percentiles, the machine description, and Markdown tables.

use std::time::Duration;

use crate::server::project_root;

/// Latency samples in microseconds.
#[derive(Default)]
pub struct Samples {
    us: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn push(&mut self, us: u64) {
        self.us.push(us);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.us.extend(other.us);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.us.len()
    }

    /// The `q` quantile (nearest rank) in µs; `None` without samples.
    pub fn quantile(&mut self, q: f64) -> Option<u64> {
        if !self.sorted {
            self.us.sort_unstable();
            self.sorted = true;
        }
        let n = self.us.len();
        if n == 0 {
            return None;
        }
        // Nearest rank: ceil(q·n), 1-based; the f64 round trip is exact for any realistic n (the
        // casts are allowed for `clippy::pedantic` users: q is in [0, 1], the result is clamped).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.us.get(rank - 1).copied()
    }

    /// The `q` quantile in ms, or "-" without samples.
    pub fn ms(&mut self, q: f64) -> String {
        self.quantile(q).map_or_else(|| "-".to_owned(), ms)
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{}.{:02}", us / 1000, (us % 1000) / 10)
}

/// `count` events over `elapsed`, per second, rounded.
pub fn rate(count: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".to_owned();
    }
    let r = count as f64 / secs;
    format!("{r:.0}")
}

/// `a / b` with two decimals.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// "2 × AMD EPYC (nproc 2)".
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").to_owned())))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!(", {} GiB RAM", (kb + (1 << 19)) >> 20))
        .unwrap_or_default();
    format!("nproc {nproc}, {model}{mem}, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The wrangler (and so workerd) the project pins, and node.
pub fn runtime() -> String {
    let wrangler = std::fs::read_to_string(project_root().join("node_modules/wrangler/package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    let node = command_output("node", &["--version"]).unwrap_or_else(|| "?".to_owned());
    let target = match std::env::var("BENCH_BASE_URL") {
        Ok(url) => format!("server at {url}"),
        Err(_) => "local `wrangler dev` (workerd)".to_owned(),
    };
    format!("{target}, wrangler {wrangler}, node {node}")
}

pub fn date() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M"]).unwrap_or_else(|| "?".to_owned())
}

pub fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A Markdown table printed at once.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        println!("| {} |", self.header.join(" | "));
        println!("|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::default();
        assert_eq!(s.quantile(0.5), None);
        for us in (1..=100).rev() {
            s.push(us * 1000);
        }
        assert_eq!(s.quantile(0.5), Some(50_000));
        assert_eq!(s.quantile(0.99), Some(99_000));
        assert_eq!(s.quantile(1.0), Some(100_000));
        assert_eq!(s.quantile(0.0), Some(1000));
        assert_eq!(s.ms(0.95), "95.00");
    }

    #[test]
    fn formats() {
        assert_eq!(ms(1234), "1.23");
        assert_eq!(rate(150, Duration::from_millis(1500)), "100");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(ratio(3.0, 4.0), "0.75");
    }
}
