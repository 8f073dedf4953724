//! The region map: which regions exist and which servers (and proxies) each one has, in
//! code or from a TOML region file.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::status::{toml_error, Error};

fn default_server_name() -> String {
    "localhost".into()
}

/// One server a client can call: its address and the name its certificate carries.
/// Unknown keys are errors (a misspelt `servername` must not silently mean `localhost`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEndpoint {
    /// UDP address of the server.
    pub addr: SocketAddr,
    /// Name checked against the server's certificate. Default `localhost`.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

impl ServerEndpoint {
    /// An endpoint at `addr` whose certificate names `server_name`.
    pub fn new(addr: SocketAddr, server_name: impl Into<String>) -> ServerEndpoint {
        ServerEndpoint {
            addr,
            server_name: server_name.into(),
        }
    }
}

/// A region: a name and the servers (and optional proxies) in it. Unknown keys are errors.
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
/// servers = [{ addr = "10.1.0.1:7000" }]
/// ```
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
        let map = RegionMap {
            regions: file.regions,
        };
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
            if !names.insert(&r.name) {
                return Err(Error::Config(format!(
                    "region {:?} is listed twice",
                    r.name
                )));
            }
        }
        Ok(())
    }

    /// Adds a server to `region` (creating the region if needed).
    pub fn add_server(&mut self, region: &str, server: ServerEndpoint) -> &mut Self {
        match self.regions.iter_mut().find(|r| r.name == region) {
            Some(r) => {
                if !r.servers.contains(&server) {
                    r.servers.push(server);
                }
            }
            None => self.regions.push(Region {
                name: region.to_string(),
                servers: vec![server],
                proxies: Vec::new(),
            }),
        }
        self
    }

    /// Removes the server at `addr` from every region. Empty regions stay listed.
    pub fn remove_server(&mut self, addr: SocketAddr) -> &mut Self {
        for r in &mut self.regions {
            r.servers.retain(|s| s.addr != addr);
        }
        self
    }

    /// The region holding the server at `addr`.
    pub fn region_of(&self, addr: SocketAddr) -> Option<&str> {
        self.regions
            .iter()
            .find(|r| r.servers.iter().any(|s| s.addr == addr))
            .map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(map.regions[0].servers[1].server_name, "localhost");
        assert_eq!(map.regions[1].proxies.len(), 1);
        assert_eq!(map.region_of("[::1]:7002".parse().unwrap()), Some("far"));
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
