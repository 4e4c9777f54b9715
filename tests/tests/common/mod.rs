//! Shared helpers for the emulator tests: an in-process emulator with a
//! kubeconfig on disk, a bounded `kubectl` runner and a kube-rs client.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Output;

use sluice_tests::emulator::{Emulator, EmulatorOptions};
use sluice_tests::kubectl::Kubectl;

/// A CRD with a schema, an enum, a default, a CEL rule, a status
/// subresource and printer columns.
pub const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - rule: "self.size <= self.max"
              message: "size must not exceed max"
            properties:
              size: {type: integer, minimum: 1, description: "How big the widget is."}
              max: {type: integer, default: 10}
              color: {type: string, enum: [red, blue]}
              owner: {type: string, pattern: '^[a-z]+$'}
          status:
            type: object
            properties:
              observedGeneration: {type: integer}
              conditions:
                type: array
                items:
                  type: object
                  required: [type, status]
                  properties:
                    type: {type: string}
                    status: {type: string, enum: ["True", "False", "Unknown"]}
                    reason: {type: string}
"#;

/// An in-process emulator plus a scratch directory holding its kubeconfig.
pub struct Cluster {
    /// The emulator (stops when dropped).
    pub emulator: Emulator,
    /// Scratch directory (kubeconfig, HOME for kubectl's caches).
    pub dir: tempfile::TempDir,
    /// Path of the kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// Starts an emulator on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with(EmulatorOptions::default()).await
    }

    /// Starts an emulator with options.
    pub async fn start_with(options: EmulatorOptions) -> Self {
        let emulator = Emulator::start(options).await.expect("emulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        emulator
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        Self {
            emulator,
            dir,
            kubeconfig,
        }
    }

    /// Runs kubectl with this cluster's kubeconfig, optionally feeding stdin.
    pub async fn kubectl_with_input(&self, args: &[&str], stdin: Option<&str>) -> Output {
        Kubectl {
            kubeconfig: self.kubeconfig.clone(),
            home: self.dir.path().to_owned(),
        }
        .run(args, stdin)
        .await
    }

    /// Runs kubectl.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None).await
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        assert_ok(args, &output)
    }

    /// `kubectl apply -f -` of `yaml` (extra args appended), asserting success.
    pub async fn apply(&self, yaml: &str, extra: &[&str]) -> String {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        let output = self.kubectl_with_input(&args, Some(yaml)).await;
        assert_ok(&args, &output)
    }

    /// A kube-rs client configured from the kubeconfig.
    pub async fn client(&self) -> kube::Client {
        sluice_tests::kubectl::client(&self.emulator.kubeconfig_yaml()).await
    }
}

/// Asserts a command succeeded; returns its stdout.
pub fn assert_ok(args: &[&str], output: &Output) -> String {
    sluice_tests::kubectl::check(args, output)
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
