//! The emulator driven by the real `kubectl` on the machine.

mod common;

use common::{Cluster, WIDGET_CRD, stderr};

const WIDGET: &str =
    "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, color: red}\n";

async fn cluster_with_widgets() -> Cluster {
    let cluster = Cluster::start().await;
    let out = cluster.apply(WIDGET_CRD, &[]).await;
    assert!(out.contains("widgets.example.com created"), "{out}");
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=10s",
        ])
        .await;
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_schema_cel_and_printer_columns() {
    let cluster = cluster_with_widgets().await;
    let resources = cluster
        .kubectl_ok(&["api-resources", "--api-group=example.com"])
        .await;
    assert!(
        resources.contains("widgets") && resources.contains("wd") && resources.contains("Widget"),
        "{resources}"
    );

    let explained = cluster.kubectl_ok(&["explain", "widgets.spec.size"]).await;
    assert!(explained.contains("How big the widget is."), "{explained}");

    cluster.apply(WIDGET, &[]).await;
    let table = cluster.kubectl_ok(&["get", "widgets"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SIZE", "COLOR", "READY", "AGE"], "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("w1") && row.contains(" 3 ") && row.contains("red")),
        "{table}"
    );
    let defaulted = cluster
        .kubectl_ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.max}"])
        .await;
    assert_eq!(defaulted, "10", "schema default applied");

    let enum_violation = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 3, color: green}\n";
    let out = cluster
        .kubectl_with_input(&["apply", "-f", "-"], Some(enum_violation))
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains(r#"spec.color: Unsupported value: "green": supported values: "red", "blue""#),
        "{}",
        stderr(&out)
    );

    let cel_violation =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {size: 30}\n";
    let out = cluster
        .kubectl_with_input(&["apply", "-f", "-"], Some(cel_violation))
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"spec: Invalid value: "object": size must not exceed max"#),
        "{}",
        stderr(&out)
    );

    let several = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w4}\nspec: {size: 0, owner: Bob}\n";
    let out = cluster
        .kubectl_with_input(&["apply", "-f", "-"], Some(several))
        .await;
    let err = stderr(&out);
    assert!(
        err.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            r#"spec.owner: Invalid value: "Bob": spec.owner in body should match '^[a-z]+$'"#
        ),
        "{err}"
    );

    let unknown = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w5}\nspec: {size: 1, junk: true}\n";
    let out = cluster
        .kubectl_with_input(&["apply", "-f", "-"], Some(unknown))
        .await;
    assert!(
        stderr(&out).contains(r#"strict decoding error: unknown field "spec.junk""#),
        "{}",
        stderr(&out)
    );
    // Without strict validation the unknown field is pruned, with a warning.
    let out = cluster
        .kubectl_with_input(&["apply", "--validate=warn", "-f", "-"], Some(unknown))
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"unknown field "spec.junk""#),
        "{}",
        stderr(&out)
    );
    let pruned = cluster
        .kubectl_ok(&["get", "wd", "w5", "-o", "jsonpath={.spec}"])
        .await;
    assert_eq!(pruned, r#"{"max":10,"size":1}"#);

    let missing = cluster.kubectl(&["get", "wd", "nope"]).await;
    assert!(
        stderr(&missing).contains(r#"widgets.example.com "nope" not found"#),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn patches_status_and_wait() {
    let cluster = cluster_with_widgets().await;
    cluster.apply(WIDGET, &[]).await;
    cluster
        .kubectl_ok(&[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":5}}"#,
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "patch",
            "widget",
            "w1",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/color","value":"blue"}]"#,
        ])
        .await;
    let spec = cluster
        .kubectl_ok(&[
            "get",
            "wd",
            "w1",
            "-o",
            "jsonpath={.spec.size} {.spec.color} {.metadata.generation}",
        ])
        .await;
    assert_eq!(spec, "5 blue 3");

    // kubectl patch defaults to a strategic merge patch, which custom
    // resources do not take.
    let strategic = cluster
        .kubectl(&["patch", "widget", "w1", "-p", r#"{"spec":{"size":4}}"#])
        .await;
    assert!(
        stderr(&strategic).contains("application/strategic-merge-patch+json is not supported"),
        "{}",
        stderr(&strategic)
    );

    // A patch breaking the CEL rule is refused like a create.
    let out = cluster
        .kubectl(&[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":50}}"#,
        ])
        .await;
    assert!(
        stderr(&out).contains("size must not exceed max"),
        "{}",
        stderr(&out)
    );

    // Status is written through the subresource only, without bumping generation.
    let ignored = cluster
        .kubectl_ok(&[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"observedGeneration":9}}"#,
        ])
        .await;
    assert!(ignored.contains("no change"), "{ignored}");
    let wait = {
        let cluster = &cluster;
        async move {
            cluster
                .kubectl(&[
                    "wait",
                    "--for=condition=Ready",
                    "widget/w1",
                    "--timeout=20s",
                ])
                .await
        }
    };
    let patch = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        cluster
            .kubectl_ok(&[
                "patch",
                "widget",
                "w1",
                "--subresource=status",
                "--type",
                "merge",
                "-p",
                r#"{"status":{"observedGeneration":3,"conditions":[{"type":"Ready","status":"True"}]}}"#,
            ])
            .await
    };
    let (waited, _) = tokio::join!(wait, patch);
    assert!(waited.status.success(), "{}", stderr(&waited));
    let after = cluster
        .kubectl_ok(&[
            "get",
            "wd",
            "w1",
            "-o",
            "jsonpath={.metadata.generation} {.status.observedGeneration}",
        ])
        .await;
    assert_eq!(after, "3 3");
    let table = cluster.kubectl_ok(&["get", "wd", "w1"]).await;
    assert!(
        table.lines().nth(1).is_some_and(|row| row.contains("True")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_by_two_managers() {
    let cluster = cluster_with_widgets().await;
    let first = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: s1, labels: {team: a}}\nspec: {size: 2}\n";
    let second =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: s1}\nspec: {color: red}\n";
    cluster
        .apply(first, &["--server-side", "--field-manager=one"])
        .await;
    cluster
        .apply(second, &["--server-side", "--field-manager=two"])
        .await;
    let both = cluster
        .kubectl_ok(&[
            "get",
            "wd",
            "s1",
            "-o",
            "jsonpath={.spec.size} {.spec.color} {.metadata.labels.team}",
        ])
        .await;
    assert_eq!(both, "2 red a");

    // "one" drops its label: only its own field goes.
    let first_again =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: s1}\nspec: {size: 2}\n";
    cluster
        .apply(first_again, &["--server-side", "--field-manager=one"])
        .await;
    let after = cluster
        .kubectl_ok(&[
            "get",
            "wd",
            "s1",
            "-o",
            "jsonpath={.spec.size} {.spec.color} {.metadata.labels}",
        ])
        .await;
    assert_eq!(after, "2 red ");

    let takeover = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: s1}\nspec: {size: 4, color: red}\n";
    let out = cluster
        .kubectl_with_input(
            &["apply", "--server-side", "--field-manager=two", "-f", "-"],
            Some(takeover),
        )
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"conflict with "one""#),
        "{}",
        stderr(&out)
    );
    cluster
        .apply(
            takeover,
            &["--server-side", "--field-manager=two", "--force-conflicts"],
        )
        .await;
    let managers = cluster
        .kubectl_ok(&[
            "get",
            "wd",
            "s1",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await;
    assert_eq!(
        managers, "two",
        "one lost its only field to the forced apply"
    );
    assert_eq!(
        cluster
            .kubectl_ok(&["get", "wd", "s1", "-o", "jsonpath={.spec.size}"])
            .await,
        "4"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_waits_for_finalizers() {
    let cluster = cluster_with_widgets().await;
    let held = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: held, finalizers: [example.com/cleanup]}\nspec: {size: 1}\n";
    cluster.apply(held, &[]).await;
    cluster
        .kubectl_ok(&["delete", "widget", "held", "--wait=false"])
        .await;
    let marked = cluster
        .kubectl_ok(&[
            "get",
            "wd",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(
        !marked.is_empty(),
        "deletionTimestamp set while the finalizer holds"
    );
    let delete = {
        let cluster = &cluster;
        async move {
            cluster
                .kubectl(&["wait", "--for=delete", "widget/held", "--timeout=20s"])
                .await
        }
    };
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        cluster
            .kubectl_ok(&[
                "patch",
                "widget",
                "held",
                "--type",
                "merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ])
            .await
    };
    let (deleted, _) = tokio::join!(delete, release);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = cluster.kubectl(&["get", "wd", "held"]).await;
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
}

#[tokio::test(flavor = "multi_thread")]
async fn builtins_selectors_and_tokens() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["create", "namespace", "shop"]).await;
    cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "create",
            "configmap",
            "a",
            "--from-literal=k=v",
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "create",
            "configmap",
            "b",
            "--from-literal=k=v",
        ])
        .await;
    cluster
        .kubectl_ok(&["-n", "shop", "label", "configmap", "a", "tier=front"])
        .await;
    let front = cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "get",
            "cm",
            "-l",
            "tier in (front,back)",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(front.trim(), "configmap/a");
    let others = cluster
        .kubectl_ok(&["-n", "shop", "get", "cm", "-l", "!tier", "-o", "name"])
        .await;
    assert_eq!(others.trim(), "configmap/b");
    let everywhere = cluster
        .kubectl_ok(&[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.name=b",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(everywhere.trim(), "configmap/b");
    let duplicate = cluster
        .kubectl(&["-n", "shop", "create", "configmap", "a"])
        .await;
    assert!(
        stderr(&duplicate).contains(r#"configmaps "a" already exists"#),
        "{}",
        stderr(&duplicate)
    );
    let wrong_ns = cluster
        .kubectl(&["-n", "nowhere", "create", "configmap", "x"])
        .await;
    assert!(
        stderr(&wrong_ns).contains(r#"namespaces "nowhere" not found"#),
        "{}",
        stderr(&wrong_ns)
    );

    let default_account = cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "get",
            "serviceaccount",
            "default",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(default_account.trim(), "serviceaccount/default");
    cluster
        .kubectl_ok(&["-n", "shop", "create", "serviceaccount", "app"])
        .await;
    let token = cluster
        .kubectl_ok(&["-n", "shop", "create", "token", "app", "--audience=sluice"])
        .await;
    let review = format!(
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {}\n  audiences: [sluice]\n",
        token.trim()
    );
    let out = cluster
        .kubectl_with_input(
            &[
                "create",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.authenticated} {.status.user.username}",
            ],
            Some(&review),
        )
        .await;
    assert_eq!(
        common::assert_ok(&["create tokenreview"], &out),
        "true system:serviceaccount:shop:app"
    );

    cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods",
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "create",
            "rolebinding",
            "app-reads",
            "--role=reader",
            "--serviceaccount=shop:app",
        ])
        .await;
    let binding = cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "get",
            "rolebinding",
            "app-reads",
            "-o",
            "jsonpath={.roleRef.name} {.subjects[0].name}",
        ])
        .await;
    assert_eq!(binding, "reader app");

    cluster.kubectl_ok(&["delete", "namespace", "shop"]).await;
    let emptied = cluster.kubectl_ok(&["get", "cm", "-A", "-o", "name"]).await;
    assert!(
        emptied.trim().is_empty(),
        "namespace deletion removes its objects: {emptied}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_requires_an_issued_token() {
    let cluster = Cluster::start().await;
    let bogus = cluster.kubectl(&["get", "ns", "--token=not-a-token"]).await;
    assert!(!bogus.status.success());
    assert!(
        stderr(&bogus).contains("Unauthorized") || stderr(&bogus).contains("logged in"),
        "{}",
        stderr(&bogus)
    );
    let token = cluster.emulator.issue_token("default", "robot", &[]);
    let listed = cluster
        .kubectl_ok(&[
            "get",
            "ns",
            "default",
            "-o",
            "name",
            &format!("--token={token}"),
        ])
        .await;
    assert_eq!(listed.trim(), "namespace/default");
    // A token for another audience is not valid against the API itself.
    let scoped = cluster
        .emulator
        .issue_token("default", "robot", &["sluice"]);
    let review = format!(
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {scoped}}}\n"
    );
    let out = cluster
        .kubectl_with_input(
            &[
                "create",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.authenticated}",
            ],
            Some(&review),
        )
        .await;
    assert_eq!(common::assert_ok(&["create tokenreview"], &out), "false");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_mode_serves_kubectl_without_tokens() {
    let options = sluice_tests::emulator::EmulatorOptions {
        plain_http: true,
        ..Default::default()
    };
    let cluster = Cluster::start_with(options).await;
    assert!(cluster.emulator.url().starts_with("http://"));
    cluster.kubectl_ok(&["create", "namespace", "plain"]).await;
    let names = cluster
        .kubectl_ok(&["get", "ns", "plain", "-o", "name"])
        .await;
    assert_eq!(names.trim(), "namespace/plain");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_watch_prints_table_rows() {
    use tokio::io::AsyncBufReadExt as _;

    let cluster = cluster_with_widgets().await;
    cluster.apply(WIDGET, &[]).await;
    let mut watch = tokio::process::Command::new("kubectl")
        .args(["get", "widgets", "-w", "--request-timeout=20s"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", cluster.dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w runs");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout piped")).lines();
    let mut seen = Vec::new();
    let mut next_line = async || {
        let line = tokio::time::timeout(std::time::Duration::from_secs(15), lines.next_line())
            .await
            .expect("a line in time")
            .expect("stdout readable")
            .expect("watch still open");
        seen.push(line.clone());
        line
    };
    let header = next_line().await;
    assert!(
        header.starts_with("NAME") && header.contains("COLOR"),
        "{header}"
    );
    let first = next_line().await;
    assert!(first.starts_with("w1") && first.contains("red"), "{first}");
    cluster
        .kubectl_ok(&[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"color":"blue"}}"#,
        ])
        .await;
    let changed = next_line().await;
    assert!(
        changed.starts_with("w1") && changed.contains("blue"),
        "headers once, then the change: {changed}"
    );
    watch.kill().await.expect("stop kubectl");
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_bound_tokens_die_with_their_pod() {
    let cluster = Cluster::start().await;
    cluster.kubectl_ok(&["run", "app", "--image=app:1"]).await;
    let token = cluster
        .kubectl_ok(&[
            "create",
            "token",
            "default",
            "--audience=sluice",
            "--bound-object-kind=Pod",
            "--bound-object-name=app",
        ])
        .await;
    let review = format!(
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {}, audiences: [sluice]}}\n",
        token.trim()
    );
    let fields = "jsonpath={.status.authenticated} {.status.user.username} {.status.user.extra.authentication\\.kubernetes\\.io/pod-name[0]}";
    let out = cluster
        .kubectl_with_input(&["create", "-f", "-", "-o", fields], Some(&review))
        .await;
    assert_eq!(
        common::assert_ok(&["create tokenreview"], &out),
        "true system:serviceaccount:default:default app"
    );

    let from_library = cluster
        .emulator
        .issue_pod_token("default", "default", "app", &["sluice"])
        .expect("pod exists");
    assert!(
        cluster
            .emulator
            .issue_pod_token("default", "default", "ghost", &[])
            .is_err()
    );

    cluster.kubectl_ok(&["delete", "pod", "app"]).await;
    for token in [token.trim(), from_library.as_str()] {
        let review = format!(
            "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {token}, audiences: [sluice]}}\n"
        );
        let out = cluster
            .kubectl_with_input(
                &[
                    "create",
                    "-f",
                    "-",
                    "-o",
                    "jsonpath={.status.authenticated}",
                ],
                Some(&review),
            )
            .await;
        assert_eq!(
            common::assert_ok(&["create tokenreview"], &out),
            "false",
            "the pod is gone"
        );
    }
}
