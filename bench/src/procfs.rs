//! What `/proc` says about processes: the members of a process group (a `wrangler dev` and its
//! workerd), their resident memory and their CPU time, and this driver's own CPU time. Linux
//! only; elsewhere every reading is `None` and the tables say "-".

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on every Linux
/// this runs on).
const TICKS_PER_SEC: u64 = 100;

/// Fields of `/proc/<pid>/stat` after the command name (which may hold spaces and parentheses,
/// so the split is at the last `)`): state is field 3, pgrp 5, utime 14, stime 15.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// The process group of a `/proc/<pid>/stat` line.
pub fn parse_pgrp(stat: &str) -> Option<u32> {
    stat_fields(stat)?.get(2)?.parse().ok()
}

/// utime + stime, in clock ticks, of a `/proc/<pid>/stat` line.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in kB of a `/proc/<pid>/status` text.
pub fn parse_rss_kb(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn read(pid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

/// The pids of process group `pgrp` (empty when `/proc` is unreadable).
pub fn group_pids(pgrp: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| read(*pid, "stat").as_deref().and_then(parse_pgrp) == Some(pgrp))
        .collect()
}

/// Resident memory of every process of group `pgrp`, summed, in kB.
pub fn group_rss_kb(pgrp: u32) -> Option<u64> {
    let pids = group_pids(pgrp);
    if pids.is_empty() {
        return None;
    }
    Some(pids.iter().filter_map(|pid| read(*pid, "status").as_deref().and_then(parse_rss_kb)).sum())
}

/// `Name` of a `/proc/<pid>/status` text.
pub fn parse_name(status: &str) -> Option<&str> {
    status.lines().find_map(|l| l.strip_prefix("Name:")).map(str::trim)
}

/// Resident memory per process of group `pgrp`: (name, pid, kB), largest first.
pub fn group_rss_by_process(pgrp: u32) -> Vec<(String, u32, u64)> {
    let mut all: Vec<(String, u32, u64)> = group_pids(pgrp)
        .into_iter()
        .filter_map(|pid| {
            let status = read(pid, "status")?;
            Some((parse_name(&status)?.to_owned(), pid, parse_rss_kb(&status)?))
        })
        .collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.2));
    all
}

/// How many files `pid` has open, and how many of them are sockets (`None` when unreadable).
pub fn open_fds(pid: u32) -> Option<(usize, usize)> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let links: Vec<_> = dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).collect();
    let sockets = links.iter().filter(|l| l.to_string_lossy().starts_with("socket:")).count();
    Some((links.len(), sockets))
}

/// `pid`'s command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    read(pid, "cmdline").map(|c| c.replace('\0', " ")).unwrap_or_default()
}

/// The local ports of the listening sockets (state `0A`) among `/proc/net/tcp` lines whose inode
/// is in `inodes`.
pub fn parse_listen_ports(net_tcp: &str, inodes: &[u64]) -> Vec<u16> {
    net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?.parse::<u64>().ok()?);
            (*state == "0A" && inodes.contains(&inode)).then_some(())?;
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

/// The TCP ports process `pid` listens on (IPv4).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: Vec<u64> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_string_lossy().strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect();
    std::fs::read_to_string("/proc/net/tcp").map(|t| parse_listen_ports(&t, &inodes)).unwrap_or_default()
}

/// CPU time of every process of group `pgrp` (children reaped by them not included), in ticks.
pub fn group_cpu_ticks(pgrp: u32) -> Option<u64> {
    let pids = group_pids(pgrp);
    if pids.is_empty() {
        return None;
    }
    Some(pids.iter().filter_map(|pid| read(*pid, "stat").as_deref().and_then(parse_cpu_ticks)).sum())
}

/// This process's CPU time, in ticks.
pub fn self_cpu_ticks() -> Option<u64> {
    std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_cpu_ticks)
}

/// CPU used between two tick readings over `wall`, as a percentage of one core.
pub fn cpu_percent(before: u64, after: u64, wall: Duration) -> Option<f64> {
    let secs = wall.as_secs_f64();
    (secs > 0.0 && after >= before).then(|| (after - before) as f64 / TICKS_PER_SEC as f64 / secs * 100.0)
}

/// A CPU meter over one window: the driver's own process and, when known, a server's group.
pub struct CpuMeter {
    start: Instant,
    driver: Option<u64>,
    server: Option<(u32, u64)>,
}

impl CpuMeter {
    pub fn start(server_pgrp: Option<u32>) -> CpuMeter {
        CpuMeter {
            start: Instant::now(),
            driver: self_cpu_ticks(),
            server: server_pgrp.and_then(|g| Some((g, group_cpu_ticks(g)?))),
        }
    }

    /// "driver 85%, server 120% of one core" since `start`.
    pub fn report(&self) -> String {
        let wall = self.start.elapsed();
        let pct = |p: Option<f64>| p.map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%"));
        let driver = self.driver.zip(self_cpu_ticks()).and_then(|(a, b)| cpu_percent(a, b, wall));
        let server = self.server.and_then(|(g, a)| cpu_percent(a, group_cpu_ticks(g)?, wall));
        format!("driver {}, wrangler+workerd {}", pct(driver), pct(server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name holding a space and a parenthesis.
    const STAT: &str = "4242 (work erd) x) S 4200 4100 4100 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 9 0 100 1000000 2500 18446744073709551615";

    #[test]
    fn reads_pgrp_and_cpu_from_stat() {
        assert_eq!(parse_pgrp(STAT), Some(4100));
        assert_eq!(parse_cpu_ticks(STAT), Some(1234 + 567));
        assert_eq!(parse_pgrp("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 1"), None);
    }

    #[test]
    fn reads_rss_from_status() {
        let status = "Name:\tworkerd\nVmPeak:\t  999 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(parse_rss_kb(status), Some(123_456));
        assert_eq!(parse_rss_kb("Name:\tkthreadd\n"), None);
        assert_eq!(parse_name(status), Some("workerd"));
    }

    #[test]
    fn finds_listening_ports_of_given_inodes() {
        let net = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:86CB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:864B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0
   2: 0100007F:864B 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   3: garbage";
        assert_eq!(parse_listen_ports(net, &[1002, 1003]), vec![0x864B]);
        assert_eq!(parse_listen_ports(net, &[1001, 1002]), vec![0x86CB, 0x864B]);
        assert!(parse_listen_ports(net, &[]).is_empty());
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(100, 250, Duration::from_secs(1)), Some(150.0));
        assert_eq!(cpu_percent(100, 50, Duration::from_secs(1)), None);
        assert_eq!(cpu_percent(0, 1, Duration::ZERO), None);
    }

    #[test]
    fn finds_its_own_group() {
        // This test process is in some group, and is one of its members.
        let own = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_pgrp);
        if let Some(pgrp) = own {
            assert!(group_pids(pgrp).contains(&std::process::id()));
            assert!(group_rss_kb(pgrp).is_some_and(|kb| kb > 0));
        }
    }
}
