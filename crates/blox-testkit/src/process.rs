//! Running the blox binary as a child process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What blox prints on stdout once it serves.
use blox_api::LISTENING_PREFIX as READY_PREFIX;
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running blox server. Its output goes to the test's stderr (shown when the test fails) with a
/// `[blox]` prefix. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct BloxProcess {
    child: Child,
    base_url: String,
    api: crate::Api,
}

impl BloxProcess {
    /// Starts `bin` with `args` (which should include `--listen 127.0.0.1:0`) and `env` added to the
    /// test's environment, and waits up to 30 s for its `blox listening on URL` line.
    pub async fn start<I, S>(
        bin: impl AsRef<Path>,
        args: I,
        env: &[(String, String)],
    ) -> anyhow::Result<BloxProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        crate::install_crypto_provider();
        let bin = bin.as_ref();
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("blox stdout")?;
        let stderr = child.stderr.take().context("blox stderr")?;
        forward("blox", stderr);
        let ready = watch_stdout(stdout);

        match tokio::time::timeout(START_DEADLINE, ready).await {
            Ok(Ok(base_url)) => Ok(BloxProcess {
                api: crate::Api::new(&base_url),
                child,
                base_url,
            }),
            outcome => {
                let _ = child.kill();
                let status = child.wait().ok();
                match outcome {
                    Err(_) => bail!("blox printed no {READY_PREFIX:?} line within {START_DEADLINE:?}"),
                    _ => bail!(
                        "blox exited ({status:?}) before printing {READY_PREFIX:?} (see its stderr above)"
                    ),
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`, as blox printed it (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// JSON requests to the server.
    pub fn api(&self) -> &crate::Api {
        &self.api
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL, no chance to clean up) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process (SIGKILL) through a shared reference, for a test whose other parts still
    /// hold it, and waits until the kernel reports it dead (it is reaped on drop).
    pub async fn crash(&self) {
        send_signal(self.pid(), "KILL");
        self.wait_state("blox is dead", |state| state == 'Z' || state == 'X')
            .await;
    }

    /// Freezes the process (SIGSTOP) and waits until the kernel reports it stopped: from then on it
    /// runs no code, its timers and connections notwithstanding, until [`BloxProcess::resume`].
    pub async fn pause(&self) {
        send_signal(self.pid(), "STOP");
        // T: stopped by a signal.
        self.wait_state("blox is stopped", |state| state == 'T').await;
    }

    /// Waits until the process's state (`/proc/PID/stat`, as `ps` shows it) passes `check`.
    async fn wait_state(&self, what: &str, check: impl Fn(char) -> bool) {
        let stat = format!("/proc/{}/stat", self.pid());
        crate::wait_until(what, Duration::from_secs(5), || async {
            // `PID (COMM) STATE ...`
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ")?.1.chars().next())
                .is_some_and(&check)
        })
        .await;
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        send_signal(self.pid(), "CONT");
    }

    /// Asks the process to stop (SIGTERM) and waits up to `deadline` for it to exit; returns its exit
    /// status. For tests of graceful shutdown.
    pub async fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM", deadline).await
    }

    /// Ctrl-C (SIGINT), then waits up to `deadline` for the process to exit.
    pub async fn interrupt(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("INT", deadline).await
    }

    async fn signal(&mut self, signal: &str, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            // Already gone: collect its status.
            return self.child.wait().context("waiting for blox");
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for blox")? {
                return Ok(status);
            }
            if start.elapsed() >= deadline {
                bail!("blox did not exit within {deadline:?} of SIG{signal}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for BloxProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -SIGNAL PID`; panics when it fails (the process is gone).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("running kill -{signal}: {e}"));
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Forwards stdout to the test's stderr, reporting the URL of the ready line once.
fn watch_stdout(stdout: impl Read + Send + 'static) -> oneshot::Receiver<String> {
    watch_lines("blox", stdout, |line| {
        line.strip_prefix(READY_PREFIX)
            .map(|url| url.trim().trim_end_matches('/').to_owned())
    })
}

/// Forwards a child's output to the test's stderr, each line tagged with `name`, and sends the first
/// thing `ready` finds in a (trimmed) line.
pub(crate) fn watch_lines<T: Send + 'static>(
    name: &'static str,
    stream: impl Read + Send + 'static,
    ready: impl Fn(&str) -> Option<T> + Send + 'static,
) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
            if tx.is_some()
                && let Some(found) = ready(line.trim())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(found);
            }
        }
    });
    rx
}

/// Forwards a child's output to the test's stderr, each line tagged with `name`.
pub(crate) fn forward(name: &'static str, stream: impl Read + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for blox: prints the ready line (after some noise) and stays up.
    const FAKE: &str =
        "echo starting; echo 'blox listening on http://127.0.0.1:4321/'; echo $FAKE_ENV; exec sleep 60";

    #[tokio::test]
    async fn finds_the_url_and_stops_the_process() {
        let env = [("FAKE_ENV".to_owned(), "set".to_owned())];
        let mut blox = BloxProcess::start("/bin/sh", ["-c", FAKE], &env).await.unwrap();
        assert_eq!(blox.base_url(), "http://127.0.0.1:4321");
        assert_eq!(blox.url("/v1/tasks"), "http://127.0.0.1:4321/v1/tasks");
        assert!(blox.try_status().is_none());
        assert_eq!(blox.api().base_url(), blox.base_url());
        blox.pause().await;
        blox.resume();
        blox.wait_state("the process runs again", |state| state != 'T')
            .await;
        let status = blox.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success());
        blox.kill(); // harmless once exited
        let crashed = BloxProcess::start("/bin/sh", ["-c", FAKE], &env).await.unwrap();
        crashed.crash().await;
    }

    #[tokio::test]
    async fn reports_a_process_that_exits_before_serving() {
        let err = BloxProcess::start("/bin/sh", ["-c", "echo bad flag >&2; exit 2"], &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
        let err = BloxProcess::start("/nonexistent/blox", Vec::<String>::new(), &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/blox"), "{err}");
    }
}

/// What a command that ran to its end printed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    /// `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end (killed if the test gives up first); panics past `deadline` or on
/// output that is not UTF-8.
pub async fn run_to_end(mut command: tokio::process::Command, deadline: Duration) -> Finished {
    let description = format!("{:?}", command.as_std());
    let child = command.kill_on_drop(true).output();
    let out = tokio::time::timeout(deadline, child)
        .await
        .unwrap_or_else(|_| panic!("{description} did not finish within {deadline:?}"))
        .unwrap_or_else(|e| panic!("{description} does not run: {e}"));
    Finished::from(out)
}

impl From<std::process::Output> for Finished {
    /// Panics on output that is not UTF-8.
    fn from(out: std::process::Output) -> Finished {
        Finished {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("UTF-8 on stdout"),
            stderr: String::from_utf8(out.stderr).expect("UTF-8 on stderr"),
        }
    }
}
