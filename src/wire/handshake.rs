//! The plugin's handshake line: a pure parser with go-plugin's acceptance rules.
//!
//! `CORE|APPVER|NETWORK|ADDRESS|PROTOCOL|SERVERCERT|MUX`: 4 to 7 fields (more are ignored).

use super::address::Address;
use super::clip;
use crate::error::{Error, ErrorKind, Result};

/// The only core protocol version there is.
pub const CORE_PROTOCOL_VERSION: i64 = 1;

/// go-plugin's client reads field 6 as a certificate only when it is longer than this many
/// characters (`len(parts[5]) > 50` in its client): a shorter field, such as the empty one of a
/// plugin with its own TLS provider, or a placeholder some servers print, carries no
/// certificate. The DER of the smallest real certificate is several hundred bytes.
const MIN_CERT_FIELD_LEN: usize = 50;

/// What a plugin announced in its handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The application protocol version the plugin chose (one the host offered).
    pub app_version: u32,
    /// Where the plugin listens.
    pub address: Address,
    /// The wire protocol; always `grpc` once parsed (netrpc is rejected).
    pub protocol: String,
    /// The DER bytes of the plugin's TLS certificate (field 6), when present.
    pub server_cert_der: Option<Vec<u8>>,
    /// Field 7: the plugin supports multiplexed brokering.
    pub multiplex: bool,
}

/// Parses and validates one handshake line against the versions the host offered.
pub fn parse(line: &str, offered_versions: &[u32]) -> Result<Handshake> {
    let line = line.trim();
    let parts: Vec<&str> = line.split('|').collect();
    if parts.len() < 4 {
        return Err(Error::new(
            ErrorKind::Handshake,
            format!(
                "unrecognized remote plugin message: {:?}; expected a handshake line \
                 CORE|APPVERSION|NETWORK|ADDRESS|PROTOCOL|CERT as the first stdout line (is this a \
                 go-plugin plugin, built for this machine, and did it print to stdout before its \
                 handshake?)",
                clip(line)
            ),
        ));
    }

    let core: i64 = parts[0].parse().map_err(|e| {
        Error::new(
            ErrorKind::Handshake,
            format!(
                "error parsing core protocol version {:?}: {e}",
                clip(parts[0])
            ),
        )
    })?;
    if core != CORE_PROTOCOL_VERSION {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "incompatible core API version with plugin: plugin version {core}, core version \
                 {CORE_PROTOCOL_VERSION}; the plugin must be built with a compatible go-plugin"
            ),
        ));
    }

    let app_version: u32 = parts[1].parse().map_err(|e| {
        Error::new(
            ErrorKind::Handshake,
            format!("error parsing protocol version {:?}: {e}", clip(parts[1])),
        )
    })?;
    if !offered_versions.contains(&app_version) {
        return Err(Error::new(
            ErrorKind::Version,
            format!(
                "incompatible API version with plugin: plugin version {app_version}, client \
                 versions {offered_versions:?}"
            ),
        ));
    }

    let address = Address::parse(parts[2], parts[3])?;

    let protocol = parts.get(4).copied().unwrap_or("netrpc");
    if protocol != "grpc" {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "unsupported plugin protocol {:?}: this host supports only \"grpc\" \
                 (netrpc plugins cannot be driven by rpcplugin)",
                clip(protocol)
            ),
        ));
    }

    let server_cert_der = match parts.get(5) {
        Some(cert) if cert.len() > MIN_CERT_FIELD_LEN => Some(decode_cert_field(cert)?),
        _ => None,
    };
    let multiplex = parts.get(6).and_then(|v| parse_go_bool(v)).unwrap_or(false);

    Ok(Handshake {
        app_version,
        address,
        protocol: protocol.to_owned(),
        server_cert_der,
        multiplex,
    })
}

/// The unix socket a handshake line names, even when the line is rejected, so the host can
/// remove it after killing the plugin.
pub(crate) fn announced_unix_socket(line: &str) -> Option<std::path::PathBuf> {
    let parts: Vec<&str> = line.trim().split('|').collect();
    match parts.as_slice() {
        [_, _, "unix", path, ..] if !path.is_empty() => Some(path.into()),
        _ => None,
    }
}

/// Renders the line a plugin prints (used by the plugin side); `multiplex` adds field 7, `true`,
/// as go-plugin does when the host asked for multiplexed brokering.
pub(crate) fn render(
    app_version: u32,
    address: &Address,
    server_cert_der: Option<&[u8]>,
    multiplex: bool,
) -> String {
    let cert = server_cert_der.map(encode_unpadded).unwrap_or_default();
    let mux = if multiplex { "|true" } else { "" };
    format!(
        "{CORE_PROTOCOL_VERSION}|{app_version}|{}|{}|grpc|{cert}{mux}",
        address.network(),
        address.address_string()
    )
}

/// Field 6 is standard base64 without padding (Go's RawStdEncoding); some servers pad it. Accepts
/// both and returns the DER bytes.
fn decode_cert_field(field: &str) -> Result<Vec<u8>> {
    let mut b64: String = field.chars().filter(|c| !c.is_whitespace()).collect();
    let trimmed_len = b64.trim_end_matches('=').len();
    b64.truncate(trimmed_len);
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    openssl::base64::decode_block(&b64).map_err(|e| {
        Error::new(
            ErrorKind::Tls,
            format!(
                "error parsing server cert: expected base64 DER in handshake field 6, got {:?}",
                clip(field)
            ),
        )
        .with_source(e)
    })
}

fn encode_unpadded(der: &[u8]) -> String {
    openssl::base64::encode_block(der)
        .trim_end_matches('=')
        .to_owned()
}

/// Go's strconv.ParseBool.
pub(crate) fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "MIIBkTCB+6ADAgECAgEBMA0GCSqGSIb3DQEBBQUAMBQxEjAQBgNVBAMTCWxvY2FsaG9zdDAeFw0yMzAxMDEwMDAwMDBa";

    #[test]
    fn every_field_a_plugin_sends_is_quoted_clipped() {
        // Found by the handshake fuzz target: huge fields came back whole in the error.
        let huge = "\u{9a}".repeat(2000);
        for line in [
            huge.clone(),
            format!("{huge}|1|unix|/s|grpc"),
            format!("1|{huge}|unix|/s|grpc"),
            format!("1|1|{huge}|/s|grpc"),
            format!("1|1|tcp|{huge}|grpc"),
            format!("1|1|unix|/s|{huge}"),
            format!("1|1|unix|/s|grpc|{huge}"),
        ] {
            let e = parse(&line, &[1]).unwrap_err().to_string();
            assert!(e.len() < 1024, "a {} byte error: {e}", e.len());
            assert!(e.contains(" bytes)"), "says how long it was: {e}");
        }
    }

    #[test]
    fn accepts_four_to_seven_fields() {
        let h = parse("1|1|tcp|127.0.0.1:1234\n", &[1]).unwrap_err();
        assert_eq!(h.kind(), ErrorKind::Protocol, "4 fields mean netrpc");
        assert!(h
            .to_string()
            .contains("unsupported plugin protocol \"netrpc\""));

        let h = parse("1|1|tcp|127.0.0.1:1234|grpc", &[1]).unwrap();
        assert_eq!(h.address.to_string(), "tcp:127.0.0.1:1234");
        assert_eq!(h.server_cert_der, None);

        let h = parse("1|2|unix|/tmp/p/plugin1|grpc|\r\n", &[1, 2]).unwrap();
        assert_eq!(h.app_version, 2);
        assert_eq!(h.address, Address::Unix("/tmp/p/plugin1".into()));

        let h = parse("1|2|unix|/tmp/s|grpc||true|extra", &[2]).unwrap();
        assert!(h.multiplex);
    }

    #[test]
    fn short_cert_fields_are_ignored_and_long_ones_decoded_padded_or_not() {
        let h = parse("1|1|unix|/s|grpc|short-junk", &[1]).unwrap();
        assert_eq!(h.server_cert_der, None);
        let unpadded = CERT.trim_end_matches('=');
        let a = parse(&format!("1|1|unix|/s|grpc|{unpadded}"), &[1]).unwrap();
        let b = parse(&format!("1|1|unix|/s|grpc|{unpadded}=="), &[1]).unwrap();
        assert!(a.server_cert_der.is_some());
        assert_eq!(a.server_cert_der, b.server_cert_der);
        let bad = parse(&format!("1|1|unix|/s|grpc|{}", "!".repeat(60)), &[1]).unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::Tls);
    }

    #[test]
    fn rejections_name_what_was_expected_and_seen() {
        let e = parse("hello world", &[1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Handshake);
        assert!(e
            .to_string()
            .contains("unrecognized remote plugin message: \"hello world\""));

        let e = parse("2|1|unix|/s|grpc|", &[1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.to_string().contains("plugin version 2, core version 1"));

        let e = parse("x|1|unix|/s|grpc|", &[1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Handshake);

        let e = parse("1|3|unix|/s|grpc|", &[1, 2]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Version);
        assert!(e
            .to_string()
            .contains("plugin version 3, client versions [1, 2]"));

        let e = parse("1|1|pipe|/s|grpc|", &[1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);

        let e = parse("1|1|unix|/s||", &[1]).unwrap_err();
        assert!(e.to_string().contains("unsupported plugin protocol \"\""));
    }

    #[test]
    fn announced_socket_is_found_in_rejected_lines() {
        assert_eq!(
            announced_unix_socket("1|9|unix|/tmp/p.sock|grpc|\n"),
            Some("/tmp/p.sock".into())
        );
        assert_eq!(announced_unix_socket("1|1|tcp|127.0.0.1:5|grpc|"), None);
        assert_eq!(announced_unix_socket("garbage"), None);
    }

    #[test]
    fn render_round_trips() {
        let der = vec![7u8; 100];
        let line = render(3, &Address::Unix("/d/plugin9".into()), Some(&der), false);
        assert!(!line.contains('='), "field 6 is unpadded: {line}");
        let h = parse(&line, &[3]).unwrap();
        assert_eq!(h.server_cert_der.as_deref(), Some(&der[..]));
        assert_eq!(
            render(1, &h.address, None, false),
            "1|1|unix|/d/plugin9|grpc|"
        );
        let mux = render(1, &h.address, None, true);
        assert_eq!(mux, "1|1|unix|/d/plugin9|grpc||true");
        assert!(parse(&mux, &[1]).unwrap().multiplex);
    }
}
