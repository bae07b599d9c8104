//! Where a plugin listens: unix socket or tcp address, and how grpcio names it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::clip;
use crate::error::{Error, ErrorKind, Result};

/// The address a plugin announced in its handshake (or that a broker peer announced).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix domain socket at this path.
    Unix(PathBuf),
    /// A tcp socket.
    Tcp(SocketAddr),
}

impl Address {
    /// Parses a go-plugin `network` and `address` pair. For tcp an empty host (`:1234`) means
    /// 127.0.0.1, as Go's resolver treats it; `localhost` is the one host name accepted (no name is
    /// looked up).
    pub fn parse(network: &str, address: &str) -> Result<Address> {
        match network {
            "unix" => {
                if address.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Handshake,
                        "expected a unix socket path, got an empty address",
                    ));
                }
                Ok(Address::Unix(PathBuf::from(address)))
            }
            "tcp" => parse_tcp(address),
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "unknown address type {:?} for address {:?}: expected \"unix\" or \"tcp\"",
                    clip(other),
                    clip(address)
                ),
            )),
        }
    }

    /// `"unix"` or `"tcp"`, as written in the handshake.
    pub fn network(&self) -> &'static str {
        match self {
            Address::Unix(_) => "unix",
            Address::Tcp(_) => "tcp",
        }
    }

    /// The address part as written in the handshake (path or `ip:port`).
    pub fn address_string(&self) -> String {
        match self {
            Address::Unix(path) => path.display().to_string(),
            Address::Tcp(addr) => addr.to_string(),
        }
    }

    /// The target string gRPC core dials: `unix:/path`, `ipv4:1.2.3.4:5`, `ipv6:[::1]:5`. Using
    /// the explicit schemes keeps gRPC's DNS resolver out of the way.
    pub(crate) fn grpc_target(&self) -> String {
        match self {
            Address::Unix(path) => format!("unix:{}", path.display()),
            Address::Tcp(addr @ SocketAddr::V4(_)) => format!("ipv4:{addr}"),
            Address::Tcp(addr @ SocketAddr::V6(_)) => format!("ipv6:{addr}"),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.network(), self.address_string())
    }
}

fn parse_tcp(address: &str) -> Result<Address> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(Address::Tcp(addr));
    }
    let bad = |why: String| {
        Error::new(
            ErrorKind::Handshake,
            format!(
                "expected a tcp address host:port, got {:?}: {why}",
                clip(address)
            ),
        )
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("no port".into()))?;
    let port: u16 = port.parse().map_err(|e| bad(format!("bad port: {e}")))?;
    if host.is_empty() {
        return Ok(Address::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    }
    // No name lookup: a plugin listens on an address of this machine, and a DNS query could
    // block past the start deadline. `localhost` is the one name accepted.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Address::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    }
    host.parse::<IpAddr>()
        .map(|ip| Address::Tcp(SocketAddr::new(ip, port)))
        .map_err(|_| {
            bad(format!(
                "{:?} is not an IP address (host names other than localhost are not looked up)",
                clip(host)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_a_huge_address_clipped() {
        // Found by the handshake fuzz target: a 4 KiB address came back whole in the error.
        let huge = format!("127.0.0.1:{}", "\u{fffd}".repeat(1500));
        for (network, address) in [
            ("tcp", huge.clone()),
            ("tcp", format!("{huge}:80")),
            ("tcp", format!("[{huge}]:80")),
            ("vsock", huge.clone()),
            (huge.as_str(), "x".to_owned()),
        ] {
            let e = Address::parse(network, &address).unwrap_err().to_string();
            assert!(e.len() < 1024, "a {} byte error: {e}", e.len());
            assert!(e.contains(" bytes)"), "says how long it was: {e}");
        }
    }

    #[test]
    fn parses_networks() {
        assert_eq!(
            Address::parse("unix", "/tmp/x/plugin1")
                .unwrap()
                .grpc_target(),
            "unix:/tmp/x/plugin1"
        );
        assert_eq!(
            Address::parse("tcp", "127.0.0.1:1234")
                .unwrap()
                .grpc_target(),
            "ipv4:127.0.0.1:1234"
        );
        assert_eq!(
            Address::parse("tcp", ":1234").unwrap().grpc_target(),
            "ipv4:127.0.0.1:1234"
        );
        assert_eq!(
            Address::parse("tcp", "[::1]:99").unwrap().grpc_target(),
            "ipv6:[::1]:99"
        );
        let err = Address::parse("udp", "1.2.3.4:5").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.to_string().contains("unknown address type \"udp\""));
        assert_eq!(
            Address::parse("tcp", "nowhere").unwrap_err().kind(),
            ErrorKind::Handshake
        );
        assert_eq!(
            Address::parse("tcp", "LocalHost:7").unwrap().grpc_target(),
            "ipv4:127.0.0.1:7"
        );
    }

    #[test]
    fn host_names_are_refused_without_a_lookup() {
        // A lookup could block past the start deadline; the name is refused without one.
        let err = Address::parse("tcp", "plugin.example.invalid:1234").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Handshake);
        assert_eq!(
            err.to_string(),
            "expected a tcp address host:port, got \"plugin.example.invalid:1234\": \
             \"plugin.example.invalid\" is not an IP address (host names other than localhost are \
             not looked up)"
        );
    }
}
