//! Child processes and what `/proc` says about them: the upstream and the
//! bare proxy are this binary's own subcommands, the sidecar is its release
//! binary. Each runs in its own process so that its CPU time and memory can
//! be read on their own, and none shares a runtime with the load generator.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// A child's first stdout line says where it listens (it binds port 0, so
/// there is no race for ports).
pub fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;
    Ok(())
}

/// Children of `loadbench` hold a pipe from it on stdin: when the parent is
/// gone for any reason, even SIGKILL, the pipe closes and they exit.
pub async fn exit_when_parent_leaves() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => std::process::exit(0),
            Ok(_) => {}
        }
    }
}

/// A spawned child, ended when dropped (killed, or its guard's stdin closed).
pub struct Proc {
    pub child: Child,
    pub pid: u32,
}

impl Proc {
    /// Starts `loadbench <args>` and waits for its `listening ADDR` line.
    pub async fn own(name: &'static str, args: &[String]) -> anyhow::Result<(Proc, SocketAddr)> {
        Self::own_from(&std::env::current_exe()?, name, args).await
    }

    /// [`Proc::own`] from a copy of this executable written into `dir`:
    /// a gateway with code pages of its own, as any real gateway has,
    /// instead of the very pages the load generator and the upstream run
    /// (one file mapped by three processes is one copy in memory and in
    /// the CPU's caches; tests/LOADBENCH.md, "The benchmark's own noise").
    pub async fn own_copy(
        dir: &Path,
        name: &'static str,
        args: &[String],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let copy = dir.join(format!("loadbench-{}", name.replace(' ', "-")));
        std::fs::copy(std::env::current_exe()?, &copy)
            .with_context(|| format!("copying loadbench to {}", copy.display()))?;
        Self::own_from(&copy, name, args).await
    }

    async fn own_from(
        exe: &Path,
        name: &'static str,
        args: &[String],
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let pid = child.id().context("child has no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .with_context(|| format!("the {name} did not start within 10 s"))??;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("the {name} said {line:?}"))?
            .parse()?;
        Ok((Proc { child, pid }, addr))
    }

    /// Starts the sidecar binary under `loadbench guard`; ready once
    /// `/readyz` answers 200. `pid` is the sidecar's own, for `/proc`.
    pub async fn sidecar(
        bin: &Path,
        config: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
        log: &str,
    ) -> anyhow::Result<Proc> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("guard")
            .arg("--")
            .arg(bin)
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .env("RUST_LOG", log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Not kill_on_drop: a SIGKILLed guard could not end the sidecar.
            // Dropping the handle closes the guard's stdin, which ends both.
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("the sidecar's guard did not start within 10 s")??;
        let pid = line
            .trim()
            .strip_prefix("pid ")
            .with_context(|| format!("the sidecar's guard said {line:?}"))?
            .parse()?;
        let mut proc = Proc { child, pid };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proc.child.try_wait()? {
                anyhow::bail!("the sidecar exited at start: {status}");
            }
            if readyz(admin).await {
                return Ok(proc);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the sidecar was not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes the child's stdin (every child here exits on that, the
    /// guard ending the sidecar first), then kills it if it is still there.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// `loadbench guard -- CMD ARGS…`: runs CMD, says `pid N` on stdout, and
/// kills CMD as soon as its own stdin closes — so that a child whose code is
/// not ours (the sidecar) ends with `loadbench` even when `loadbench` is
/// killed outright. Returns when CMD ends.
pub fn guard(command: &[OsString]) -> anyhow::Result<()> {
    let (program, args) = command.split_first().context("guard needs a command")?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "pid {}", child.id())?;
        out.flush()?;
    }
    let parent_gone = Arc::new(AtomicBool::new(false));
    {
        let parent_gone = parent_gone.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            parent_gone.store(true, Ordering::SeqCst);
        });
    }
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(
                status.success(),
                "{} ended: {status}",
                program.to_string_lossy()
            );
            return Ok(());
        }
        if parent_gone.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn readyz(admin: SocketAddr) -> bool {
    use tokio::io::AsyncWriteExt;
    let Ok(mut tcp) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let req = format!("GET /readyz HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

/// utime + stime of the whole process (all threads, live and dead), in clock
/// ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. Field 3 (state) is the first one there; utime is 14 and
    // stime 15.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// On-CPU nanoseconds per live thread, from `/proc/<pid>/task/*/schedstat`:
/// nanosecond-precise where `stat`'s utime+stime come in 10 ms ticks, which
/// at a few hundred requests a round is too coarse to compare two gateways.
pub fn thread_cpu_ns(pid: u32) -> anyhow::Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat.split_whitespace().next().and_then(|n| n.parse().ok()) {
            out.insert(tid, ns);
        }
    }
    Ok(out)
}

/// CPU nanoseconds spent between two `thread_cpu_ns` samples by the threads
/// alive at the second (a thread that ended in between is not counted: the
/// runtimes' workers live as long as the process).
pub fn cpu_ns_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on every Linux we meet).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// (VmRSS, VmHWM) in KiB from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("odd {name}"))?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
