//! The shared dev certificate behind `--insecure-dev`.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian::transport::pem_encode;
use meridian::{DevCa, Identity};

use super::errors::{CliError, CliResult};

/// The dev CA's certificate, which `--insecure-dev` clients trust.
pub const DEV_CA_FILE: &str = "ca.pem";
/// The server certificate chain every `serve --insecure-dev` presents.
pub const DEV_CERT_FILE: &str = "server.pem";
/// Its private key.
pub const DEV_KEY_FILE: &str = "server.key";

/// The dev directory: `--dev-dir`, else `$MERIDIAN_DEV_DIR` (clap reads both), else
/// `$HOME/.cache/meridian/dev`, else `<temp dir>/meridian-dev`.
pub fn dev_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".cache/meridian/dev"),
        _ => std::env::temp_dir().join("meridian-dev"),
    }
}

/// The shared dev server identity: made once (a fresh dev CA issues a certificate for
/// `localhost`, `127.0.0.1` and `::1`; the CA's key is then thrown away, so nothing else
/// can ever be issued under it), then reused by every `serve --insecure-dev`.
pub fn dev_identity(dir: &Path) -> CliResult<Identity> {
    let (cert, key) = (dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE));
    if !cert.exists() || !key.exists() {
        create_dev_dir(dir)?;
    }
    check_dev_dir(dir)?;
    Identity::from_pem_files(&cert, &key).map_err(|e| CliError::from_meridian(&e))
}

/// Refuses a dev directory someone else could have planted or changed: it must belong to
/// this user and be writable by nobody else, and its key readable by nobody else (a
/// shared temp folder, when `HOME` is unset, is exactly where another user could put a
/// CA of their own for `--insecure-dev` clients to trust).
#[cfg(unix)]
pub fn check_dev_dir(dir: &Path) -> CliResult<()> {
    use std::os::unix::fs::MetadataExt;
    let bad = |why: String| {
        CliError::config(format!(
            "--insecure-dev: refusing the dev directory {}: {why} (remove it, or pass a \
             --dev-dir of your own)",
            dir.display()
        ))
    };
    // On Linux /proc/self belongs to the process's user; elsewhere the owner is not
    // checked.
    let me = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    for (path, private) in [
        (dir.to_path_buf(), false),
        (dir.join(DEV_CA_FILE), false),
        (dir.join(DEV_KEY_FILE), true),
    ] {
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.file_type().is_symlink() {
            return Err(bad(format!("{} is a symbolic link", path.display())));
        }
        if let Some(me) = me {
            if m.uid() != me {
                return Err(bad(format!(
                    "{} belongs to user {}, not to this user ({me})",
                    path.display(),
                    m.uid()
                )));
            }
        }
        let open = if private { 0o077 } else { 0o022 };
        if m.mode() & open != 0 {
            return Err(bad(format!(
                "{} has mode {:o}, open to other users",
                path.display(),
                m.mode() & 0o777
            )));
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_dev_dir(_dir: &Path) -> CliResult<()> {
    Ok(())
}

fn create_dev_dir(dir: &Path) -> CliResult<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", parent.display())))?;
    let ca = DevCa::new().map_err(|e| CliError::from_meridian(&e))?;
    let id = ca
        .issue_server(&["localhost", "127.0.0.1", "::1"])
        .map_err(|e| CliError::from_meridian(&e))?;
    // Written into a fresh directory that is then renamed into place, so a concurrent
    // `serve` sees either nothing or all three files; the loser of a race uses the winner's.
    let staging = parent.join(format!(
        ".meridian-dev-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    make_private_dir(&staging)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", staging.display())))?;
    let chain: String = id
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    let write = || -> std::io::Result<()> {
        std::fs::write(staging.join(DEV_CA_FILE), ca.certificate_pem())?;
        std::fs::write(staging.join(DEV_CERT_FILE), chain)?;
        write_private(
            &staging.join(DEV_KEY_FILE),
            &pem_encode("PRIVATE KEY", id.key.secret_der()),
        )
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(CliError::other(format!(
            "cannot write the dev certificate: {e}"
        )));
    }
    if std::fs::rename(&staging, dir).is_err() {
        // Someone else made it first (or an empty directory is in the way).
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.join(DEV_KEY_FILE).exists() {
            return Err(CliError::other(format!(
                "cannot create the dev directory {} (remove what is in the way, or pass --dev-dir)",
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn make_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

#[cfg(not(unix))]
fn make_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// SHA-256 of a certificate's DER, as `sha256:` and lowercase hex (what `openssl x509
/// -noout -fingerprint -sha256` prints, without colons). The hash comes from the TLS
/// library's own provider, so the CLI needs no hashing crate of its own.
pub fn fingerprint(der: &[u8]) -> String {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hex = match suite.tls13() {
        Some(s) => s
            .common
            .hash_provider
            .hash(der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        None => String::from("unavailable"),
    };
    format!("sha256:{hex}")
}

// ---------------------------------------------------------------------------------------
// JSON <-> Value
// ---------------------------------------------------------------------------------------
