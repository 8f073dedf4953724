//! Trust flags: `--ca`, `--pin`, client certificates, `--insecure-dev`.

use std::path::PathBuf;

use clap::Args;
use meridian::{ClientTls, Identity};

use super::dev::{dev_dir, DEV_CA_FILE};
use super::errors::{CliError, CliResult};

/// TLS flags shared by every command that talks to servers.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// Trust the CA certificates in this PEM file when verifying servers.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_dev")]
    pub ca: Option<PathBuf>,
    /// Present this PEM certificate chain to servers that require client certificates
    /// (mutual TLS); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// FOR LOCAL TESTING ONLY: trust the development CA that `meridian serve
    /// --insecure-dev` keeps in the dev directory (see --dev-dir). Anyone who can read that
    /// directory can impersonate the servers that use it.
    #[arg(long)]
    pub insecure_dev: bool,
    /// The dev directory of --insecure-dev.
    #[arg(long, value_name = "DIR", env = "MERIDIAN_DEV_DIR")]
    pub dev_dir: Option<PathBuf>,
}

impl TlsArgs {
    /// The client TLS settings these flags describe.
    pub fn client_tls(&self) -> CliResult<ClientTls> {
        let tls = if let Some(ca) = &self.ca {
            ClientTls::with_roots_pem_file(ca).map_err(|e| CliError::from_meridian(&e))?
        } else if self.insecure_dev {
            let dir = dev_dir(self.dev_dir.as_deref());
            let ca = dir.join(DEV_CA_FILE);
            if !ca.exists() {
                return Err(CliError::config(format!(
                    "--insecure-dev: no dev CA at {} (start `meridian serve --insecure-dev` first, with the same --dev-dir)",
                    ca.display()
                )));
            }
            super::dev::check_dev_dir(&dir)?;
            ClientTls::with_roots_pem_file(&ca).map_err(|e| CliError::from_meridian(&e))?
        } else {
            return Err(CliError::config(
                "say whom to trust: --ca FILE (a CA's PEM certificate) or, for local testing, --insecure-dev",
            ));
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let id =
                    Identity::from_pem_files(cert, key).map_err(|e| CliError::from_meridian(&e))?;
                Ok(tls.with_identity(id))
            }
            _ => Ok(tls),
        }
    }
}
