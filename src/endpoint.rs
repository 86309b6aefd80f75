//! What a forward is, as the client names it: its kind and its two ends
//! (a TCP host and port, or a Unix socket path). Shared by the mux codec,
//! which decodes them, and the transport, which opens them; pure data.

use std::fmt;

/// Where one end of a forward is: a TCP host and port, or a Unix socket path.
/// An empty host means "not given" (the client sends "" for `-L 1234:h:p`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.is_empty() => write!(f, "LOCALHOST:{port}"),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix { path } => f.write_str(path),
        }
    }
}

/// A TCP endpoint, as tests write one.
#[cfg(test)]
pub fn tcp(host: &str, port: u16) -> Endpoint {
    Endpoint::Tcp {
        host: host.into(),
        port,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardKind {
    Local,
    Remote,
    Dynamic,
}

/// An OPEN_FWD / CLOSE_FWD body. The six wire fields are kept as sent, since
/// CLOSE_FWD must match an open forward exactly, spelling included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    pub kind: ForwardKind,
    pub listen: Endpoint,
    /// For dynamic forwards the client sends host "socks", port 0.
    pub connect: Endpoint,
}
