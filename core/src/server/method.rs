//! [`Method`]: a method's name and properties, as registered.

/// A method name plus its flags, given when registering a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    pub(super) name: String,
    pub(super) idempotent: bool,
}

impl Method {
    /// A method with this name, not idempotent.
    pub fn new(name: impl Into<String>) -> Method {
        Method {
            name: name.into(),
            idempotent: false,
        }
    }

    /// Marks the method safe to run more than once: clients may retry and hedge it and
    /// send it in 0-RTT data.
    pub fn idempotent(mut self) -> Method {
        self.idempotent = true;
        self
    }
}

impl From<&str> for Method {
    fn from(s: &str) -> Method {
        Method::new(s)
    }
}

impl From<String> for Method {
    fn from(s: String) -> Method {
        Method::new(s)
    }
}

/// The server's method table, looked up once per call.
pub(super) type MethodMap = std::collections::HashMap<
    String,
    std::sync::Arc<super::builder::MethodEntry>,
    std::hash::BuildHasherDefault<NameHasher>,
>;

/// Hashes method names for [`MethodMap`] with FNV-1a, a few instructions per byte of a
/// short name where SipHash costs a fixed hundred or so. SipHash's key defends a table into
/// which an attacker inserts keys of their choosing; only the server's owner inserts here,
/// and a peer's name is only looked up, which cannot make the owner's names collide.
#[derive(Clone, Copy)]
pub(super) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
