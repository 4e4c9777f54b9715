//! The operator's flags (DESIGN.md, "Operator"), parsed once.

use std::net::SocketAddr;

use sluice_crds::Duration;

/// How the operator runs. Every flag also reads an environment variable.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Where sidecars fetch snapshots and post reports (HTTPS).
    #[arg(
        long,
        env = "SLUICE_DISTRIBUTION_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub distribution_listen: SocketAddr,
    /// Where the sidecar-injection webhook listens (HTTPS; not served yet: 404).
    #[arg(long, env = "SLUICE_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` (plain HTTP).
    #[arg(long, env = "SLUICE_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SLUICE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Secret (in the operator's namespace) holding `tls.crt`, `tls.key`
    /// and `ca.crt`: loaded when present (cert-manager), else generated once
    /// and stored there so restarts keep the same CA.
    #[arg(long, env = "SLUICE_TLS_SECRET", default_value = "sluice-operator-tls")]
    pub tls_secret: String,
    /// How often sidecars are told to report.
    #[arg(long, env = "SLUICE_REPORT_INTERVAL", default_value = "2s")]
    pub report_interval: Duration,
    /// The operator's own namespace (Lease, TLS Secret). Default: the
    /// in-cluster namespace or the kubeconfig context's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Name of the Service in front of the distribution port (it selects
    /// the leader's pod), for the generated certificate's DNS names.
    #[arg(long, env = "SLUICE_SERVICE_NAME", default_value = "sluice-operator")]
    pub service_name: String,
    /// Name of the Service in front of the webhook (and metrics) ports,
    /// over every replica: also in the certificate's DNS names.
    #[arg(
        long,
        env = "SLUICE_WEBHOOK_SERVICE_NAME",
        default_value = "sluice-operator-webhook"
    )]
    pub webhook_service_name: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-operator")]
    pub lease_name: String,
    /// How long a leader holds the Lease without renewing it.
    #[arg(long, env = "SLUICE_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: Duration,
    /// This replica's name in the Lease (default: `$POD_NAME` or a random id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl Options {
    /// Defaults with every listener on loopback port 0 (tests).
    pub fn loopback() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            o: Options,
        }
        let mut o = P::parse_from(["sluice-operator"]).o;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        o.distribution_listen = any;
        o.webhook_listen = any;
        o.metrics_listen = any;
        o
    }
}
