//! The region map: which regions exist and which servers (and proxies) each one has, in
//! code or from a TOML region file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::addr::ServerAddr;
use crate::status::{toml_error, Error};

/// One server a client can call: its address, the name its certificate must carry and,
/// optionally, the SHA-256 of that certificate.
///
/// In a region file or a registry record the name may be left out: it is then the host of
/// the address (`eu-west.example.com` for `eu-west.example.com:7000`, `10.0.0.1` for
/// `10.0.0.1:7000`, checked against the certificate's IP address entries), as gRPC takes
/// the authority from its target. Unknown keys are errors (a misspelt `servername` must
/// not silently fall back to the default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "EndpointEntry", into = "EndpointEntry")]
pub struct ServerEndpoint {
    /// Where the server is: an IP socket address, or a host name and port resolved at each
    /// dial.
    pub addr: ServerAddr,
    /// Name checked against the server's certificate. Default: the host of `addr`.
    pub server_name: String,
    /// SHA-256 of the server's end-entity certificate (DER), as a registry published it or
    /// a region file gives it (`cert_sha256 = "sha256:ab12..."`). Checked only by clients
    /// that pin ([`RegionClientBuilder::pin_cert_sha256`](crate::region::RegionClientBuilder::pin_cert_sha256)
    /// or a region's `pin_cert_sha256 = true`).
    pub cert_sha256: Option<[u8; 32]>,
}

/// A server entry as written in a region file.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    addr: ServerAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_sha256: Option<String>,
}

impl TryFrom<EndpointEntry> for ServerEndpoint {
    type Error = String;

    fn try_from(e: EndpointEntry) -> Result<ServerEndpoint, String> {
        let cert_sha256 = e
            .cert_sha256
            .as_deref()
            .map(parse_sha256)
            .transpose()
            .map_err(|why| format!("bad cert_sha256 of {}: {why}", e.addr))?;
        let server_name = match e.server_name {
            Some(name) if name.trim().is_empty() => {
                return Err(format!("empty server_name for {}", e.addr))
            }
            Some(name) => name,
            None => e.addr.host(),
        };
        Ok(ServerEndpoint {
            addr: e.addr,
            server_name,
            cert_sha256,
        })
    }
}

impl From<ServerEndpoint> for EndpointEntry {
    fn from(e: ServerEndpoint) -> EndpointEntry {
        EndpointEntry {
            server_name: (e.server_name != e.addr.host()).then_some(e.server_name),
            cert_sha256: e.cert_sha256.map(|h| sha256_hex(&h)),
            addr: e.addr,
        }
    }
}

/// Reads a certificate's SHA-256 as lowercase or uppercase hex, optionally prefixed with
/// `sha256:` (as `meridian serve` prints it) and with `:` between bytes (as OpenSSL prints
/// it).
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 {
        return Err(format!(
            "expected 64 hex digits (32 bytes), found {} characters",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{:?} is not hex", &hex[2 * i..2 * i + 2]))?;
    }
    Ok(out)
}

/// A SHA-256 as lowercase hex, the form registries publish.
pub fn sha256_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServerEndpoint {
    /// An endpoint at `addr` whose certificate names `server_name`.
    pub fn new(addr: impl Into<ServerAddr>, server_name: impl Into<String>) -> ServerEndpoint {
        ServerEndpoint {
            addr: addr.into(),
            server_name: server_name.into(),
            cert_sha256: None,
        }
    }

    /// An endpoint at `addr` whose certificate must carry the host of `addr` (a DNS name,
    /// or an IP address checked against the certificate's IP address entries).
    pub fn at(addr: impl Into<ServerAddr>) -> ServerEndpoint {
        let addr = addr.into();
        ServerEndpoint {
            server_name: addr.host(),
            addr,
            cert_sha256: None,
        }
    }

    /// Parses `HOST:PORT` (see [`ServerAddr::parse`]) into an endpoint named after its host.
    pub fn parse(addr: &str) -> Result<ServerEndpoint, Error> {
        Ok(ServerEndpoint::at(ServerAddr::parse(addr)?))
    }

    /// Records the SHA-256 of the certificate the server presents, for pinning clients.
    pub fn with_cert_sha256(mut self, hash: [u8; 32]) -> ServerEndpoint {
        self.cert_sha256 = Some(hash);
        self
    }
}

/// A region: a name, the servers (and optional proxies) in it, and the client-side checks
/// its servers must pass. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Region name, e.g. `eu-west`.
    pub name: String,
    /// Servers of the region.
    #[serde(default)]
    pub servers: Vec<ServerEndpoint>,
    /// Proxies that forward into the region (used by proxy-aware clients).
    #[serde(default)]
    pub proxies: Vec<ServerEndpoint>,
    /// The name every server of the region must prove, whatever its own entry (or a
    /// registry record) says: set in client-side configuration, it keeps a registry from
    /// choosing which name is verified. [`RegionMap::add_server`] applies it to servers
    /// added later (etcd records merged into a region file's regions).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Servers of this region must present the certificate whose SHA-256 their entry (or
    /// registry record) gives, besides passing the normal verification; a server with no
    /// hash is refused.
    #[serde(default)]
    pub pin_cert_sha256: bool,
}

impl Region {
    /// An empty region called `name`, with no client-side checks beyond the default.
    pub fn new(name: impl Into<String>) -> Region {
        Region {
            name: name.into(),
            servers: Vec::new(),
            proxies: Vec::new(),
            server_name: None,
            pin_cert_sha256: false,
        }
    }

    /// Applies the region's `server_name` to its servers.
    fn apply_server_name(&mut self) {
        if let Some(name) = &self.server_name {
            for s in &mut self.servers {
                s.server_name = name.clone();
            }
        }
    }
}

/// Every known region and its servers.
///
/// In TOML:
///
/// ```toml
/// [[region]]
/// name = "eu-west"
/// servers = [{ addr = "10.0.0.1:7000", server_name = "eu-west.example.com" }]
///
/// [[region]]
/// name = "us-east"
/// # Every server of the region must prove this name, whatever the entries say.
/// server_name = "us-east.example.com"
/// # And present the certificate whose SHA-256 its entry gives.
/// pin_cert_sha256 = true
/// servers = [
///     { addr = "us-east-1.example.com:7000", cert_sha256 = "sha256:<64 hex digits>" },
/// ]
/// ```
///
/// An address is an IP literal or a host name with a port; a host name is resolved at
/// each dial. A server entry without `server_name` is verified against its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RegionMap {
    /// The regions.
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
}

/// A region file as written: `[[region]]` tables and an optional `[etcd]` table (read by
/// the etcd backend); any other key is an error naming it, so `[[regions]]` or a stray
/// `server = [...]` is not taken for an empty file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    #[serde(default, rename = "region")]
    regions: Vec<Region>,
    #[serde(default)]
    #[allow(dead_code)] // Checked by `EtcdConfig::from_toml_str`, with its own rules.
    etcd: Option<toml::Table>,
}

impl RegionMap {
    /// An empty map.
    pub fn new() -> RegionMap {
        RegionMap::default()
    }

    /// Parses a TOML region file (see the type docs for the format). Unknown keys are
    /// errors; an `[etcd]` table is allowed (and read by the etcd backend). Errors give
    /// the line and column.
    pub fn from_toml_str(text: &str) -> Result<RegionMap, Error> {
        Self::parse(text).map_err(|e| Error::Config(format!("bad region file: {e}")))
    }

    /// Reads and parses a TOML region file; errors name the file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<RegionMap, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("cannot read the region file {}", path.display()),
            source,
        })?;
        Self::parse(&text)
            .map_err(|e| Error::Config(format!("bad region file {}: {e}", path.display())))
    }

    fn parse(text: &str) -> Result<RegionMap, String> {
        let file: RegionFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut map = RegionMap {
            regions: file.regions,
        };
        for r in &mut map.regions {
            r.apply_server_name();
        }
        map.validate().map_err(|e| match e {
            Error::Config(why) => why,
            other => other.to_string(),
        })?;
        Ok(map)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let mut names = std::collections::HashSet::new();
        for r in &self.regions {
            if r.name.is_empty() {
                return Err(Error::Config("a region has an empty name".into()));
            }
            if r.server_name
                .as_deref()
                .is_some_and(|n| n.trim().is_empty())
            {
                return Err(Error::Config(format!(
                    "region {:?} has an empty server_name",
                    r.name
                )));
            }
            if !names.insert(&r.name) {
                return Err(Error::Config(format!(
                    "region {:?} is listed twice",
                    r.name
                )));
            }
        }
        Ok(())
    }

    /// Adds a server to `region` (creating the region if needed). When the region has a
    /// `server_name` of its own, the server is checked against that name instead of its
    /// own.
    pub fn add_server(&mut self, region: &str, mut server: ServerEndpoint) -> &mut Self {
        match self.regions.iter_mut().find(|r| r.name == region) {
            Some(r) => {
                if let Some(name) = &r.server_name {
                    server.server_name = name.clone();
                }
                if !r.servers.contains(&server) {
                    r.servers.push(server);
                }
            }
            None => {
                let mut r = Region::new(region);
                r.servers.push(server);
                self.regions.push(r);
            }
        }
        self
    }

    /// Removes the server at `addr` from every region. Empty regions stay listed.
    pub fn remove_server(&mut self, addr: impl Into<ServerAddr>) -> &mut Self {
        let addr = addr.into();
        for r in &mut self.regions {
            r.servers.retain(|s| s.addr != addr);
        }
        self
    }

    /// The region holding the server at `addr`.
    pub fn region_of(&self, addr: impl Into<ServerAddr>) -> Option<&str> {
        let addr = addr.into();
        self.regions
            .iter()
            .find(|r| r.servers.iter().any(|s| s.addr == addr))
            .map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn parses_a_region_file() {
        let map = RegionMap::from_toml_str(
            r#"
            [[region]]
            name = "near"
            servers = [{ addr = "127.0.0.1:7000", server_name = "near.test" }, { addr = "127.0.0.1:7001" }]

            [[region]]
            name = "far"
            servers = [{ addr = "[::1]:7002" }]
            proxies = [{ addr = "127.0.0.1:8000" }]
            "#,
        )
        .unwrap();
        assert_eq!(map.regions.len(), 2);
        assert_eq!(map.regions[0].servers[0].server_name, "near.test");
        // No name given: the host of the address is the name.
        assert_eq!(map.regions[0].servers[1].server_name, "127.0.0.1");
        assert_eq!(map.regions[1].servers[0].server_name, "::1");
        assert_eq!(map.regions[1].proxies.len(), 1);
        let far: SocketAddr = "[::1]:7002".parse().unwrap();
        assert_eq!(map.region_of(far), Some("far"));
    }

    #[test]
    fn host_names_are_kept_and_name_the_certificate() {
        let map = RegionMap::from_toml_str(
            r#"
            [[region]]
            name = "near"
            servers = [{ addr = "localhost:17001" }, { addr = "api.example.com:7000", server_name = "other.example.com" }]
            "#,
        )
        .unwrap();
        let s = &map.regions[0].servers;
        assert_eq!(s[0].addr, ServerAddr::parse("localhost:17001").unwrap());
        assert_eq!(s[0].server_name, "localhost");
        assert_eq!(s[1].server_name, "other.example.com");
        let e = RegionMap::from_toml_str(
            "[[region]]\nname = \"a\"\nservers = [{ addr = \"localhost\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no port") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn region_names_and_pins_are_client_side_settings() {
        let hash = "ab".repeat(32);
        let text = format!(
            r#"
            [[region]]
            name = "eu"
            server_name = "eu.example.com"
            pin_cert_sha256 = true
            servers = [{{ addr = "127.0.0.1:7000", server_name = "evil.example.com", cert_sha256 = "sha256:{hash}" }}]
            "#
        );
        let mut map = RegionMap::from_toml_str(&text).unwrap();
        let eu = &map.regions[0];
        assert!(eu.pin_cert_sha256);
        assert_eq!(eu.servers[0].server_name, "eu.example.com");
        assert_eq!(eu.servers[0].cert_sha256, Some([0xab; 32]));
        // A server added later (an etcd record) gets the region's name too.
        map.add_server(
            "eu",
            ServerEndpoint::new(SocketAddr::from(([127, 0, 0, 1], 7001)), "evil.example.com"),
        );
        assert_eq!(map.regions[0].servers[1].server_name, "eu.example.com");
        let bad = text.replace(&hash, "zz");
        let e = RegionMap::from_toml_str(&bad).unwrap_err().to_string();
        assert!(e.contains("bad cert_sha256"), "{e}");
    }

    #[test]
    fn sha256_text_forms() {
        let lower = "0f".repeat(32);
        assert_eq!(parse_sha256(&lower), Ok([0x0f; 32]));
        assert_eq!(
            parse_sha256(&format!("sha256:{}", lower.to_uppercase())),
            Ok([0x0f; 32])
        );
        let colons: Vec<String> = (0..32).map(|_| "0F".to_string()).collect();
        assert_eq!(parse_sha256(&colons.join(":")), Ok([0x0f; 32]));
        assert!(parse_sha256("abc").is_err());
        assert_eq!(sha256_hex(&[0x0f; 32]), lower);
    }

    #[test]
    fn bad_region_files_are_clear_errors() {
        let dup = "[[region]]\nname = \"a\"\n[[region]]\nname = \"a\"\n";
        assert!(RegionMap::from_toml_str(dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let bad_addr = "[[region]]\nname = \"a\"\nservers = [{ addr = \"nowhere\" }]\n";
        assert!(RegionMap::from_toml_str(bad_addr).is_err());
        assert!(RegionMap::from_toml_str("region = 5").is_err());
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let err = |text: &str| RegionMap::from_toml_str(text).unwrap_err().to_string();
        let typo = "[[region]]\nname = \"a\"\nservers = [{ addr = \"127.0.0.1:1\", servername = \"x\" }]\n";
        let e = err(typo);
        assert!(e.contains("line 3, column"), "{e}");
        assert!(e.contains("unknown field `servername`"), "{e}");
        let e = err("[[regions]]\nname = \"a\"\n");
        assert!(
            e.contains("line 1, column 3") && e.contains("unknown field `regions`"),
            "{e}"
        );
        let e = err("[[region]]\nname = \"a\"\nserver = []\n");
        assert!(
            e.contains("line 3, column 1") && e.contains("unknown field `server`"),
            "{e}"
        );
        // The [etcd] table belongs to the etcd backend and is not an unknown key here.
        let map = RegionMap::from_toml_str("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n");
        assert!(map.unwrap().regions.is_empty());
    }

    #[test]
    fn add_and_remove_servers() {
        let mut map = RegionMap::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        map.add_server("r", ServerEndpoint::new(a, "x"));
        map.add_server("r", ServerEndpoint::new(a, "x"));
        assert_eq!(map.regions[0].servers.len(), 1);
        map.remove_server(a);
        assert!(map.regions[0].servers.is_empty());
    }
}
