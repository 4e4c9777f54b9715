//! The mocks against the providers' official SDKs (openai, anthropic,
//! google-genai, boto3): runs `src/mock/sdk_check.py` with the Python named
//! by `SLUICE_SDK_PYTHON`. Without it the test says so and passes, since
//! the SDKs are installed by CI, not by cargo.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn official_sdks_accept_the_mocks() {
    let Some(python) = std::env::var_os("SLUICE_SDK_PYTHON") else {
        eprintln!("SLUICE_SDK_PYTHON is not set: SDK conformance not checked");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/mock/sdk_check.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_mock-provider"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the SDK check");
    // Bounded: every SDK call has a 10 s timeout; the whole run gets 120 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("poll").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SDK check exceeded 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "SDK conformance failed:\n{stdout}");
}
