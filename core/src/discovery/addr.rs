//! [`ServerAddr`]: where a server is, as configured: an IP socket address, or a host name
//! and port that is looked up each time the server is dialled.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::status::Error;

/// A server's address as configured: an IP literal with a port (`10.0.0.1:7000`,
/// `[::1]:7000`), or a DNS host name with a port (`eu-west.example.com:7000`).
///
/// A host name is kept as written and resolved only when the server is dialled (and again
/// at every later dial, so a DNS change is followed the next time the server is
/// connected afresh). Two addresses are the same server when they are written the same:
/// `localhost:7000` and `127.0.0.1:7000` are two entries even if one resolves to the other.
///
/// The host is also the default name a server's certificate is checked against
/// ([`ServerAddr::host`]): a DNS name as a DNS name, an IP literal as an IP address
/// (rustls checks it against the certificate's IP address entries).
///
/// ```
/// use meridian::region::ServerAddr;
/// let ip: ServerAddr = "127.0.0.1:7000".parse()?;
/// assert_eq!(ip.host(), "127.0.0.1");
/// let named: ServerAddr = "eu-west.example.com:7000".parse()?;
/// assert_eq!((named.host(), named.port()), ("eu-west.example.com".to_string(), 7000));
/// assert!(named.socket_addr().is_none());
/// assert!("example.com".parse::<ServerAddr>().is_err()); // no port
/// # Ok::<(), meridian::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerAddr {
    /// An IP address and port: dialled as is.
    Ip(SocketAddr),
    /// A DNS host name and port: resolved at each dial.
    Host {
        /// The host name, as written (lowercase is not enforced; DNS ignores case).
        host: String,
        /// The UDP port.
        port: u16,
    },
}

impl ServerAddr {
    /// Parses `HOST:PORT`, where HOST is an IPv4 literal, a bracketed IPv6 literal
    /// (`[::1]:7000`) or a DNS name. Errors say what is wrong and show the expected form.
    pub fn parse(text: &str) -> Result<ServerAddr, Error> {
        text.parse()
    }

    /// The host as written: the IP literal (without brackets) or the DNS name. This is the
    /// default name a server's certificate must carry.
    pub fn host(&self) -> String {
        match self {
            ServerAddr::Ip(a) => a.ip().to_string(),
            ServerAddr::Host { host, .. } => host.clone(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            ServerAddr::Ip(a) => a.port(),
            ServerAddr::Host { port, .. } => *port,
        }
    }

    /// The socket address when the host is an IP literal; `None` for a host name, which
    /// must be [resolved](Self::resolve).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            ServerAddr::Ip(a) => Some(*a),
            ServerAddr::Host { .. } => None,
        }
    }

    /// Every socket address the host stands for now, in the resolver's order (an IP
    /// literal: itself, without a lookup). Fails with an error naming the host when it
    /// does not resolve or resolves to nothing.
    pub async fn resolve_all(&self) -> Result<Vec<SocketAddr>, Error> {
        match self {
            ServerAddr::Ip(a) => Ok(vec![*a]),
            ServerAddr::Host { host, port } => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|source| Error::Io {
                        context: format!("cannot resolve the host {host:?} (of {self})"),
                        source,
                    })?
                    .collect();
                if found.is_empty() {
                    return Err(Error::Config(format!(
                        "the host {host:?} (of {self}) resolves to no address"
                    )));
                }
                Ok(found)
            }
        }
    }

    /// The socket address to dial now: the IP literal, or the first address the host
    /// name resolves to (the system resolver's preferred one).
    pub async fn resolve(&self) -> Result<SocketAddr, Error> {
        let all = self.resolve_all().await?;
        all.first()
            .copied()
            .ok_or_else(|| Error::Config(format!("{self} resolves to no address")))
    }
}

impl fmt::Display for ServerAddr {
    /// `10.0.0.1:7000`, `[::1]:7000` or `host.example:7000`: the form [`parse`](Self::parse)
    /// reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Ip(a) => write!(f, "{a}"),
            ServerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for ServerAddr {
    type Err = Error;

    fn from_str(text: &str) -> Result<ServerAddr, Error> {
        let bad = |why: &str| {
            Error::Config(format!(
                "bad server address {text:?}: {why} (expected HOST:PORT, e.g. 10.0.0.1:7000, \
                 [::1]:7000 or eu-west.example.com:7000)"
            ))
        };
        let text = text.trim();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(ServerAddr::Ip(a));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(bad("no port"));
        };
        if host.parse::<IpAddr>().is_ok() || host.contains(':') {
            return Err(bad("an IPv6 address needs brackets, as in [::1]:7000"));
        }
        if host.starts_with('[') {
            return Err(bad("not an IPv6 address between the brackets"));
        }
        let port: u16 = port.parse().map_err(|_| {
            bad(&format!(
                "the port {port:?} is not a number from 0 to 65535"
            ))
        })?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // The host must be usable as a certificate name, which is also what a resolver
        // accepts: letters, digits, hyphens and dots.
        if rustls::pki_types::DnsName::try_from(host).is_err() {
            return Err(bad(&format!("{host:?} is not a valid host name")));
        }
        Ok(ServerAddr::Host {
            host: host.to_string(),
            port,
        })
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> ServerAddr {
        ServerAddr::Ip(a)
    }
}

impl From<&SocketAddr> for ServerAddr {
    fn from(a: &SocketAddr) -> ServerAddr {
        ServerAddr::Ip(*a)
    }
}

impl From<&ServerAddr> for ServerAddr {
    fn from(a: &ServerAddr) -> ServerAddr {
        a.clone()
    }
}

impl PartialEq<SocketAddr> for ServerAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        matches!(self, ServerAddr::Ip(a) if a == other)
    }
}

impl Serialize for ServerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e: Error| {
            serde::de::Error::custom(match e {
                Error::Config(why) => why,
                other => other.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_literals_and_host_names() {
        let a: ServerAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(a, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(a.host(), "127.0.0.1");
        let v6: ServerAddr = "[::1]:7001".parse().unwrap();
        assert_eq!(v6.host(), "::1");
        assert_eq!(v6.to_string(), "[::1]:7001");
        let h: ServerAddr = "eu-west.example.com:7002".parse().unwrap();
        assert_eq!(
            h,
            ServerAddr::Host {
                host: "eu-west.example.com".into(),
                port: 7002
            }
        );
        assert_eq!(h.to_string(), "eu-west.example.com:7002");
        assert_eq!(h.to_string().parse::<ServerAddr>().unwrap(), h);
        assert_eq!(h.port(), 7002);
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let err = |t: &str| t.parse::<ServerAddr>().unwrap_err().to_string();
        assert!(
            err("example.com").contains("no port"),
            "{}",
            err("example.com")
        );
        assert!(err("example.com:http").contains("not a number"));
        assert!(err("example.com:70000").contains("not a number"));
        assert!(err(":7000").contains("no host"));
        assert!(err("::1:7000").contains("needs brackets"));
        assert!(err("bad_name!:7000").contains("not a valid host name"));
        assert!(err("[nope]:7000").contains("brackets"));
    }

    #[tokio::test]
    async fn resolves_ip_literals_without_lookup_and_localhost_by_name() {
        let a: ServerAddr = "127.0.0.1:9".parse().unwrap();
        let want: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(a.resolve().await.unwrap(), want);
        let l: ServerAddr = "localhost:9".parse().unwrap();
        let got = l.resolve().await.unwrap();
        assert!(got.ip().is_loopback() && got.port() == 9, "{got}");
        let none: ServerAddr = "no-such-host.invalid:9".parse().unwrap();
        let e = none.resolve().await.unwrap_err().to_string();
        assert!(e.contains("no-such-host.invalid"), "{e}");
    }
}
