//! The `kube-emulator` binary as a process: it prints its address, writes a
//! kubeconfig, serves kubectl and dies when killed.

use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_kubectl_until_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-emulator"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kube-emulator starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let address = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("address printed in time")
        .expect("stdout readable")
        .expect("one line");
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "{address}"
    );
    let config = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    assert!(
        config.contains(&format!("server: https://{address}"))
            && config.contains("certificate-authority-data: "),
        "{config}"
    );

    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("kubectl")
            .args(["get", "namespaces", "-o", "name"])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl in time")
    .expect("kubectl runs");
    let names = String::from_utf8_lossy(&output.stdout);
    assert!(names.lines().any(|l| l == "namespace/default"), "{names}");

    child.kill().await.expect("kill the emulator");
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "nothing listens after the kill"
    );
}
