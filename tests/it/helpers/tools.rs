//! Outside programs the deployment tests drive (nginx, Prometheus, promtool, Chromium):
//! finding them, running them as child processes in a scratch directory on free ports,
//! and stopping them, helpers included, when the test ends however it ends.
//!
//! A missing program fails the test with the Debian package to install; nothing is
//! skipped. `scripts/test-tools.sh` (run by `make test`) installs them.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

/// The path of `program`, or a failure naming the Debian `package` that provides it.
pub fn require(program: &str, package: &str) -> PathBuf {
    // Debian puts nginx in /usr/sbin, which is not on every user's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed: install the Debian package `{package}` \
                 (scripts/test-tools.sh does, and `make test` runs it)"
            )
        })
}

/// A directory of its own for one test's files, removed afterwards; kept when the test
/// fails, so the logs in it can be read.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("mailroom-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        ScratchDir { path }
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    /// Writes a file, creating its directory.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A program running in a process group of its own, with its output in a log file.
/// Dropping it stops the whole group (nginx's workers, Chromium's helpers): SIGTERM
/// first, so it can clean up, then SIGKILL.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` with its output and errors in `log`.
    pub fn spawn(name: &str, command: Command, log: &Path) -> Self {
        let out = File::create(log).expect("creating the log file");
        let err = out.try_clone().unwrap();
        Self::start(name, command, out, err, log)
    }

    /// Starts `command` with its output in `output` and its errors in `log`.
    pub fn spawn_with_output(name: &str, command: Command, output: &Path, log: &Path) -> Self {
        let out = File::create(output).expect("creating the output file");
        let err = File::create(log).expect("creating the log file");
        Self::start(name, command, out, err, log)
    }

    fn start(name: &str, mut command: Command, out: File, err: File, log: &Path) -> Self {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the log, when the program has exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }

    /// Waits for a program that does its work and exits; fails the test when it fails or
    /// takes longer than `within`.
    pub async fn wait_for_success(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                // Helpers the program left behind go with it.
                self.signal_group("-KILL");
                self.child = None;
                assert!(
                    status.success(),
                    "{} failed ({status}):\n{}",
                    self.name,
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {within:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until something accepts connections on 127.0.0.1:`port`.
    pub async fn wait_for_port(&mut self, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {port} within {within:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal_group(&self, signal: &str) {
        if let Some(child) = &self.child {
            // The group id is the child's pid (process_group(0)); the minus sign addresses
            // the group.
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        let child = self.child.as_mut().unwrap();
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Also reaches helpers that outlived the leader.
        self.signal_group("-KILL");
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Where tests leave artefacts (screenshots) for people to look at:
/// `<target dir>/test-artifacts`, next to the build that ran them.
pub fn artifact_dir() -> PathBuf {
    // The test binary is <target>/<profile>/deps/it-<hash>.
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
