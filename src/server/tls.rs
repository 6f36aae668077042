//! The gRPC server's TLS (`--tls-cert`, `--tls-key`) and client-certificate checking
//! (`--tls-client-ca`).

use anyhow::Context;

use crate::config::Args;

/// The TLS configuration `--tls-cert`, `--tls-key` and `--tls-client-ca` ask for.
pub(super) fn tls_config(args: &Args) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}
