//! One child process of a test (a `seckill` node, the settler, a
//! `seckill token` run): stdin closed, stderr appended to a log file,
//! stdout drained by a thread (so the child never blocks on a full pipe)
//! and offered line by line to [`Process::wait_for_line`], which is how a
//! test waits for a banner. Killed (SIGKILL) on drop.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! let dir = seckill_testkit::temp_dir("doc-");
//! let mut cmd = Command::new("seckill");
//! seckill_testkit::process::clear_env(&mut cmd, "SECKILL_");
//! let mut node = seckill_testkit::Process::spawn(&mut cmd, &dir.path().join("node.log"));
//! let addr = node
//!     .wait_for_line("seckill listening on http://", Duration::from_secs(30))
//!     .expect("the banner");
//! node.terminate(Duration::from_secs(20)); // SIGTERM, then the exit status
//! ```

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A running (or exited) child process, killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log: PathBuf,
    /// The child's stdout, one line at a time, until it closes.
    lines: mpsc::Receiver<String>,
    reaped: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with its stderr appended to `log` (created if missing)
    /// and its stdout drained in the background.
    ///
    /// # Panics
    /// When the log cannot be opened or the program cannot be started.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Process {
        let err = open_log(log);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The reader may be gone: keep draining regardless.
                let _ = tx.send(line);
            }
        });
        Process {
            child,
            log: log.to_owned(),
            lines,
            reaped: None,
        }
    }

    /// Spawns `cmd` with both its stdout and its stderr appended to `log`
    /// (a server whose output is only read as a log: redis-server, tansu).
    /// It has no lines to wait for.
    ///
    /// # Panics
    /// When the log cannot be opened or the program cannot be started.
    pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Process {
        let out = open_log(log);
        let err = out.try_clone().expect("clone the log's handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        let (_, lines) = mpsc::channel();
        Process {
            child,
            log: log.to_owned(),
            lines,
            reaped: None,
        }
    }

    /// Waits up to `limit` for a stdout line starting with `prefix` and
    /// returns the rest of it (trimmed); earlier lines are skipped. `None`
    /// when the child closed its stdout (exited) or the time ran out.
    pub fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left)?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_owned());
            }
        }
    }

    /// The next stdout line, waiting up to `limit`; `None` when the child
    /// closed its stdout and every line was taken, or the time ran out.
    /// Lines written before a kill can still be taken after it.
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file the child's stderr goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits up to `limit` for the exit. `None` when the child
    /// was still running then (it is killed: a test never leaves one behind).
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return Some(status);
        }
        self.signal("-TERM");
        let status = self.wait_exit(limit);
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, ...) with kill(1); a no-op
    /// once the child was reaped.
    pub fn signal(&self, sig: &str) {
        if self.reaped.is_some() {
            return;
        }
        let sent = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {sig} {} failed", self.child.id());
    }

    /// SIGKILL: the child dies wherever it is. A no-op once it exited.
    pub fn kill(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            self.reaped = self.child.wait().ok();
        }
    }

    /// Waits up to `limit` for the child to exit by itself; `None` while it
    /// still runs (left running).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().expect("wait for a child process");
        }
        self.reaped
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes every variable whose name starts with `prefix` (e.g.
/// `SECKILL_`) from `cmd`'s environment, so that none leaks in from the
/// shell that runs the tests.
pub fn clear_env(cmd: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(prefix) {
            cmd.env_remove(key);
        }
    }
}

/// The last `bytes` bytes of `path` (cut at a character boundary), for
/// failure messages; empty when it cannot be read.
pub fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

fn open_log(path: &Path) -> std::fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the log {}: {e}", path.display()))
}
