//! Property tests of the pure parsers (handshake line, hclog line, `TF_REATTACH_PROVIDERS`):
//! every valid input the real peers emit (generated field by field, in every combination
//! go-plugin and pyvider produce) is accepted and reads back as what was written; mutations that
//! break a rule are rejected with an error of the right kind that says what was seen; and
//! arbitrary text never makes a parser panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use rpcplugin::{parse_handshake, parse_log_line, Address, ErrorKind, ReattachConfig};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        // Nothing is written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Where a plugin listens: a unix socket path (go-plugin, pyvider) or a loopback tcp address.
fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        "/[a-zA-Z0-9_.-]{1,20}(/[a-zA-Z0-9_.-]{1,20}){0,4}".prop_map(|p| Address::Unix(p.into())),
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| Address::Tcp(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(ip)),
            port
        ))),
        (any::<[u16; 8]>(), 1u16..).prop_map(|(ip, port)| Address::Tcp(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(ip)),
            port
        ))),
    ]
}

/// Go's `strconv.ParseBool` spellings, as field 7 may carry them.
fn go_bool() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        prop::sample::select(vec!["1", "t", "T", "TRUE", "true", "True"])
            .prop_map(|s| (s.to_owned(), true)),
        prop::sample::select(vec!["0", "f", "F", "FALSE", "false", "False"])
            .prop_map(|s| (s.to_owned(), false)),
    ]
}

/// Field 6: a DER blob in standard base64, unpadded as go-plugin writes it or padded as some
/// servers do, possibly empty (no TLS).
fn cert_field() -> impl Strategy<Value = (String, Option<Vec<u8>>)> {
    prop_oneof![
        Just((String::new(), None)),
        (prop::collection::vec(any::<u8>(), 40..600), any::<bool>()).prop_map(|(der, padded)| {
            let b64 = openssl::base64::encode_block(&der);
            let field = if padded {
                b64
            } else {
                b64.trim_end_matches('=').to_owned()
            };
            (field, Some(der))
        }),
    ]
}

/// A valid handshake line and what it says: 5, 6 or 7 fields, with line endings as peers write.
#[derive(Debug, Clone)]
struct Line {
    text: String,
    version: u32,
    address: Address,
    cert: Option<Vec<u8>>,
    multiplex: bool,
}

fn handshake_line() -> impl Strategy<Value = Line> {
    (
        1u32..=10,
        address(),
        cert_field(),
        prop::option::of(go_bool()),
        0usize..3,
        prop::sample::select(vec!["", "\n", "\r\n", " \n"]),
    )
        .prop_map(
            |(version, address, (cert_text, cert), mux, fields, ending)| {
                let mut text = format!(
                    "1|{version}|{}|{}|grpc",
                    address.network(),
                    address.address_string()
                );
                let (cert, multiplex) = match (fields, mux) {
                    (0, _) => (None, false),
                    (1, _) | (_, None) => {
                        text += &format!("|{cert_text}");
                        (cert, false)
                    }
                    (_, Some((mux_text, mux))) => {
                        text += &format!("|{cert_text}|{mux_text}");
                        (cert, mux)
                    }
                };
                text += ending;
                Line {
                    text,
                    version,
                    address,
                    cert,
                    multiplex,
                }
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_valid_handshake_line_is_accepted_as_written(line in handshake_line()) {
        let offered: Vec<u32> = (1..=10).collect();
        let parsed = parse_handshake(&line.text, &offered)
            .map_err(|e| TestCaseError::fail(format!("{:?}: {e}", line.text)))?;
        prop_assert_eq!(parsed.app_version, line.version);
        prop_assert_eq!(&parsed.address, &line.address);
        prop_assert_eq!(parsed.protocol.as_str(), "grpc");
        prop_assert_eq!(parsed.server_cert_der, line.cert);
        prop_assert_eq!(parsed.multiplex, line.multiplex);
    }

    #[test]
    fn a_version_the_host_did_not_offer_is_a_version_error(line in handshake_line()) {
        let offered: Vec<u32> = (1..=10).filter(|v| *v != line.version).collect();
        let err = parse_handshake(&line.text, &offered).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Version);
        let expected = format!("plugin version {}, client versions {offered:?}", line.version);
        prop_assert!(err.to_string().contains(&expected), "{}", err);
    }

    #[test]
    fn another_core_version_is_a_protocol_error(line in handshake_line(), core in 2i64..1000) {
        let text = format!("{core}{}", &line.text[1..]);
        let err = parse_handshake(&text, &[line.version]).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Protocol);
        let expected = format!("plugin version {core}, core version 1");
        prop_assert!(err.to_string().contains(&expected), "{}", err);
    }

    #[test]
    fn netrpc_or_a_missing_protocol_is_a_protocol_error(
        line in handshake_line(),
        protocol in prop::sample::select(vec!["netrpc", "", "GRPC", "http"]),
    ) {
        let fields: Vec<&str> = line.text.trim().split('|').collect();
        let text = if protocol.is_empty() {
            fields[..4].join("|")
        } else {
            [&fields[..4], &[protocol][..], &fields[5..]].concat().join("|")
        };
        let err = parse_handshake(&text, &[line.version]).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Protocol);
        let shown = if protocol.is_empty() { "netrpc" } else { protocol };
        let expected = format!("unsupported plugin protocol {shown:?}");
        prop_assert!(err.to_string().contains(&expected), "{}", err);
    }

    #[test]
    fn fewer_than_four_fields_is_a_handshake_error(line in handshake_line(), keep in 1usize..4) {
        let text = line.text.trim().split('|').take(keep).collect::<Vec<_>>().join("|");
        let err = parse_handshake(&text, &[line.version]).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Handshake);
        prop_assert!(err.to_string().starts_with("unrecognized remote plugin message"), "{}", err);
    }

    #[test]
    fn an_unknown_network_is_a_protocol_error(
        line in handshake_line(),
        network in "[a-z]{2,6}".prop_filter("not a known network", |n| n != "unix" && n != "tcp"),
    ) {
        let mut fields: Vec<String> = line.text.trim().split('|').map(str::to_owned).collect();
        fields[2] = network.clone();
        let err = parse_handshake(&fields.join("|"), &[line.version]).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Protocol);
        let expected = format!("unknown address type {network:?}");
        prop_assert!(err.to_string().contains(&expected), "{}", err);
    }

    #[test]
    fn the_handshake_parser_never_panics(text in ".{0,300}", offered in prop::collection::vec(any::<u32>(), 0..4)) {
        let _ = parse_handshake(&text, &offered);
    }
}

/// An hclog JSON line as go-hclog writes it, and its parts.
#[derive(Debug, Clone)]
struct HclogLine {
    text: String,
    level: log::Level,
    message: String,
    module: Option<String>,
    timestamp: String,
    fields: Vec<(String, String)>,
}

fn hclog_line() -> impl Strategy<Value = HclogLine> {
    (
        prop::sample::select(vec![
            ("trace", log::Level::Trace),
            ("debug", log::Level::Debug),
            ("info", log::Level::Info),
            ("warn", log::Level::Warn),
            ("error", log::Level::Error),
        ]),
        ".{0,80}",
        prop::option::of("[a-z][a-z.-]{0,20}"),
        (
            2000u32..2100,
            1u32..13,
            1u32..29,
            0u32..24,
            0u32..60,
            0u32..60,
            0u32..1_000_000,
        ),
        prop::sample::select(vec!["Z", "+02:00", "-07:30"]),
        prop::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,20}", 0..4),
    )
        .prop_map(|((level_text, level), message, module, t, zone, extra)| {
            let timestamp = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{zone}",
                t.0, t.1, t.2, t.3, t.4, t.5, t.6
            );
            let mut object = serde_json::Map::new();
            object.insert("@level".into(), level_text.into());
            object.insert("@message".into(), message.clone().into());
            object.insert("@timestamp".into(), timestamp.clone().into());
            if let Some(module) = &module {
                object.insert("@module".into(), module.clone().into());
            }
            let fields: Vec<(String, String)> = extra
                .into_iter()
                .filter(|(k, _)| !k.starts_with('@'))
                .collect();
            for (k, v) in &fields {
                object.insert(k.clone(), v.clone().into());
            }
            HclogLine {
                text: serde_json::Value::Object(object).to_string(),
                level,
                message,
                module,
                timestamp,
                fields,
            }
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_hclog_json_line_reads_back_as_written(line in hclog_line()) {
        let mut panic_mode = false;
        let parsed = parse_log_line(&line.text, &mut panic_mode);
        prop_assert!(parsed.json, "{}", line.text);
        prop_assert_eq!(parsed.level, line.level);
        prop_assert_eq!(&parsed.message, &line.message);
        prop_assert_eq!(&parsed.module, &line.module);
        prop_assert_eq!(parsed.timestamp.as_deref(), Some(line.timestamp.as_str()));
        let mut fields = parsed.fields.clone();
        fields.sort();
        prop_assert_eq!(fields, line.fields.clone());
        prop_assert_eq!(&parsed.raw, &line.text);
    }

    #[test]
    fn a_timestamp_without_six_fraction_digits_makes_it_a_plain_line(
        line in hclog_line(),
        digits in prop::sample::select(vec![0usize, 3, 5, 7, 9]),
    ) {
        // hclog always writes six digits; anything else is not hclog, so the line is kept as text.
        let (head, rest) = line.timestamp.split_once('.').unwrap();
        let zone_at = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
        let fraction = "1".repeat(digits);
        let sep = if digits == 0 { "" } else { "." };
        let odd = format!("{head}{sep}{fraction}{}", &rest[zone_at..]);
        let text = line.text.replace(&line.timestamp, &odd);
        let parsed = parse_log_line(&text, &mut false);
        prop_assert!(!parsed.json, "{}", text);
        prop_assert_eq!(&parsed.message, &text);
    }

    #[test]
    fn the_log_parser_never_panics_and_keeps_the_raw_line(text in ".{0,300}") {
        let parsed = parse_log_line(&text, &mut false);
        prop_assert_eq!(&parsed.raw, &text);
        prop_assert!(!parsed.partial);
    }
}

fn reattach_config() -> impl Strategy<Value = (String, ReattachConfig)> {
    (
        "registry.terraform.io/[a-z]{1,10}/[a-z]{1,10}",
        1u32..=6,
        address(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(name, protocol_version, address, pid, owned)| {
            (
                name,
                ReattachConfig {
                    protocol: "grpc".into(),
                    protocol_version,
                    address,
                    pid,
                    owned,
                },
            )
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tf_reattach_providers_round_trip((name, config) in reattach_config()) {
        let json = config.to_tf_reattach_providers(&name);
        let parsed = ReattachConfig::from_tf_reattach_providers(&json)
            .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
        prop_assert_eq!(parsed, vec![(name, config)]);
    }

    #[test]
    fn terraform_written_documents_with_several_providers_parse(
        entries in prop::collection::btree_map("[a-z]{1,8}/[a-z]{1,8}", reattach_config(), 1..5),
    ) {
        // Terraform's own form: one object, one entry per provider, "Test" for borrowed ones.
        let mut doc = serde_json::Map::new();
        for (name, (_, c)) in &entries {
            doc.insert(name.clone(), serde_json::json!({
                "Protocol": "grpc",
                "ProtocolVersion": c.protocol_version,
                "Pid": c.pid,
                "Test": !c.owned,
                "Addr": {"Network": c.address.network(), "String": c.address.address_string()},
            }));
        }
        let json = serde_json::Value::Object(doc).to_string();
        let mut parsed = ReattachConfig::from_tf_reattach_providers(&json).unwrap();
        parsed.sort_by(|a, b| a.0.cmp(&b.0));
        let expected: Vec<(String, ReattachConfig)> =
            entries.into_iter().map(|(name, (_, c))| (name, c)).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn a_broken_field_is_a_reattach_error_naming_it(
        (name, config) in reattach_config(),
        broken in prop::sample::select(vec![
            ("Pid", serde_json::json!(-1)),
            ("Pid", serde_json::json!(4294967296u64)),
            ("ProtocolVersion", serde_json::json!("5")),
            ("Test", serde_json::json!("yes")),
            ("Addr", serde_json::json!({"Network": "udp", "String": "1.2.3.4:5"})),
            ("Addr", serde_json::json!({"Network": "tcp"})),
        ]),
    ) {
        let mut doc: serde_json::Value =
            serde_json::from_str(&config.to_tf_reattach_providers(&name)).unwrap();
        doc[&name][broken.0] = broken.1.clone();
        let err = ReattachConfig::from_tf_reattach_providers(&doc.to_string()).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Reattach);
        let message = err.to_string();
        prop_assert!(message.starts_with("invalid TF_REATTACH_PROVIDERS: provider"), "{}", message);
        prop_assert!(message.contains(broken.0), "{} should name {}", message, broken.0);
    }

    #[test]
    fn the_reattach_parser_never_panics(text in ".{0,300}") {
        if let Err(e) = ReattachConfig::from_tf_reattach_providers(&text) {
            prop_assert_eq!(e.kind(), ErrorKind::Reattach);
        }
    }
}
