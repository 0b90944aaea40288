//! `size`: the Worker's WASM after a release build (`scripts/build-worker.sh`, the command
//! `wrangler dev`/`deploy` run), raw and gzip-compressed (`gzip -9`; Cloudflare's upload limit is
//! on the compressed Worker: 3 MiB on the free plan, 10 MiB on paid plans).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::server::project_root;
use crate::stats::Table;
use crate::{fail, Opts, Res};

fn kib(bytes: u64) -> String {
    format!("{}.{} KiB", bytes / 1024, (bytes % 1024) * 10 / 1024)
}

fn gzip_len(path: &Path) -> Res<u64> {
    let out = Command::new("gzip").args(["-9", "-c"]).arg(path).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(fail(format!("gzip failed on {}", path.display())));
    }
    Ok(u64::try_from(out.stdout.len())?)
}

pub fn run(opts: &Opts) -> Res<()> {
    let root = project_root();
    if !opts.flag("no-build") {
        eprintln!("size: building the Worker (sh scripts/build-worker.sh) ...");
        let status = Command::new("sh").arg("scripts/build-worker.sh").current_dir(&root).stdout(Stdio::null()).status()?;
        if !status.success() {
            return Err(fail("the Worker build failed"));
        }
    }
    let mut table = Table::new(&["file", "raw", "gzip -9"]);
    for file in ["build/index_bg.wasm", "build/index.js", "build/worker/shim.mjs"] {
        let path = root.join(file);
        let raw = std::fs::metadata(&path).map_err(|e| fail(format!("{file}: {e} (build first)")))?.len();
        let gz = gzip_len(&path)?;
        table.row(vec![format!("`{file}`"), format!("{} ({raw} B)", kib(raw)), format!("{} ({gz} B)", kib(gz))]);
    }
    table.print();
    Ok(())
}
