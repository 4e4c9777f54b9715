//! Child processes of the suite: each writes stdout and stderr to a log
//! file in the rig's directory (so a failure can show them, and scenario 7
//! can search them for keys) and is killed when its handle drops, so no
//! test leaves a process behind, whichever way it ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to announce itself.
const START: Duration = Duration::from_secs(20);

/// A running child process.
pub struct Proc {
    child: Child,
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(log)))
            .stderr(Stdio::from(log_file(log)))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { child }
    }

    /// Starts a process that prints its bound address as its first stdout
    /// line (`kube-emulator`, `mock-provider`); returns it with that line.
    pub async fn spawn_announcing(name: &str, mut command: Command, log: &Path) -> (Proc, String) {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file(log)))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        tokio::time::timeout(START, reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("{name} did not announce its address"))
            .unwrap_or_else(|e| panic!("reading {name}'s stdout: {e}"));
        // Whatever it prints later goes to its log too.
        let mut rest = tokio::fs::File::from_std(log_file(log));
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut reader, &mut rest).await;
        });
        (Proc { child }, line.trim().to_owned())
    }

    /// Takes over a child started elsewhere (killed on drop all the same).
    pub fn adopt(child: Child) -> Proc {
        Proc { child }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A binary of this workspace: `mock-provider` and `kube-emulator` are
/// this package's own, `sluice-operator` and `sluice-sidecar` live beside
/// them (see `sluice_tests::tools::workspace_binary`).
pub fn binary(name: &str) -> PathBuf {
    sluice_tests::tools::workspace_binary(Path::new(env!("CARGO_BIN_EXE_mock-provider")), name)
}
