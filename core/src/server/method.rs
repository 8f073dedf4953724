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
