//! `rpcplugin inspect`: everything the protocol negotiates and what the plugin serves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpcplugin::{Address, LogLine, RpcPluginClient, TlsMode, CORE_PROTOCOL_VERSION};
use serde_json::{json, Value};

use crate::exit;
use crate::options::Options;
use crate::reflect::{ReflectError, Reflector};

/// What the plugin's certificate says.
struct Certificate {
    subject: String,
    key: String,
    not_before: String,
    not_after: String,
}

fn certificate(der: &[u8]) -> Result<Certificate, String> {
    let cert = openssl::x509::X509::from_der(der).map_err(|e| e.to_string())?;
    let subject = cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = match cert.public_key() {
        Ok(key) => match (key.ec_key(), key.rsa()) {
            (Ok(ec), _) => {
                let curve = ec
                    .group()
                    .curve_name()
                    .and_then(|n| n.short_name().ok())
                    .unwrap_or("unknown curve");
                format!("EC {curve} ({} bits)", key.bits())
            }
            (_, Ok(_)) => format!("RSA {} bits", key.bits()),
            _ => format!("{:?} ({} bits)", key.id(), key.bits()),
        },
        Err(e) => format!("unreadable: {e}"),
    };
    Ok(Certificate {
        subject,
        key,
        not_before: cert.not_before().to_string(),
        not_after: cert.not_after().to_string(),
    })
}

/// A log line as a person reads it: hclog JSON as `module: message key=value ...`, other lines
/// as their message (a `[LEVEL]` tag becomes the level shown before it).
fn render_log(line: &LogLine) -> String {
    if !line.json {
        let tagged = line
            .message
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'));
        return match tagged {
            Some((tag, rest)) if tag.eq_ignore_ascii_case(line.level.as_str()) => {
                rest.trim_start().to_owned()
            }
            _ => line.message.clone(),
        };
    }
    let mut text = match &line.module {
        Some(module) => format!("{module}: {}", line.message),
        None => line.message.clone(),
    };
    for (key, value) in &line.fields {
        text.push_str(&format!(" {key}={value}"));
    }
    text
}

fn tls_name(mode: Option<TlsMode>) -> &'static str {
    match mode {
        Some(TlsMode::Plaintext) => "plaintext",
        Some(TlsMode::AutoMtls) => "auto mTLS",
        Some(TlsMode::User) => "TLS (configured)",
        Some(TlsMode::ServerOnly) => "TLS (server certificate only)",
        _ => "unknown",
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// One service and its methods, or why reflection could not say.
type Services =
    Result<Vec<(String, Result<Vec<crate::reflect::MethodInfo>, String>)>, ReflectError>;

fn services(client: &RpcPluginClient) -> Services {
    let channel = client
        .grpc_channel()
        .map_err(|e| ReflectError::Failed(e.to_string()))?;
    let mut reflector = Reflector::open(channel)?;
    let names = reflector.services()?;
    let described = names
        .into_iter()
        .map(|name| {
            let methods = reflector.methods(&name).map_err(|e| e.to_string());
            (name, methods)
        })
        .collect();
    reflector.close();
    Ok(described)
}

/// Whether a process with this pid still exists.
fn alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn run(options: &Options) -> u8 {
    let logs: Arc<Mutex<Vec<LogLine>>> = Arc::default();
    let client = match options.start(&logs) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let handshake = client.handshake().expect("started");
    let certificate = handshake.server_cert_der.as_deref().map(certificate);
    let timings = client.timings().unwrap_or_default();
    let health = client.ping(Duration::from_secs(5));
    let services = services(&client);
    let pid = client.pid().unwrap_or(0);
    let tls = client.tls_mode();

    let closing = Instant::now();
    client.close();
    let close_took = closing.elapsed();
    let exit_status = client.exit_status();
    let process_left = options.attach.is_none() && alive(pid);
    let socket_left = match &handshake.address {
        Address::Unix(path) if options.attach.is_none() => path.exists(),
        _ => false,
    };
    let logs = std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner()));

    let report = json!({
        "plugin": options.describe_plugin(),
        "handshake": {
            "core_version": CORE_PROTOCOL_VERSION,
            "app_version": handshake.app_version,
            "network": handshake.address.network(),
            "address": handshake.address.address_string(),
            "protocol": handshake.protocol,
            "server_certificate_sent": handshake.server_cert_der.is_some(),
            "multiplexed_brokering": handshake.multiplex,
        },
        "negotiated_version": handshake.app_version,
        "offered_versions": options.versions,
        "tls": {
            "mode": tls_name(tls),
            "certificate": match &certificate {
                Some(Ok(c)) => json!({"subject": c.subject, "key": c.key,
                    "not_before": c.not_before, "not_after": c.not_after}),
                Some(Err(e)) => json!({"error": e}),
                None => Value::Null,
            },
        },
        "timings_ms": {
            "spawn": ms(timings.spawn), "handshake": ms(timings.handshake),
            "connect": ms(timings.connect), "health": ms(timings.health),
            "total": ms(timings.total()),
        },
        "health": match &health { Ok(()) => "SERVING".to_owned(), Err(e) => e.to_string() },
        "reflection": match &services {
            Ok(list) => json!({"served": true, "services": list.iter().map(|(name, methods)| {
                json!({"name": name, "methods": match methods {
                    Ok(methods) => methods.iter().map(|m| json!({
                        "name": m.name, "input": m.input, "output": m.output,
                        "client_streaming": m.client_streaming,
                        "server_streaming": m.server_streaming,
                    })).collect::<Vec<_>>(),
                    Err(_) => Vec::new(),
                }, "error": methods.as_ref().err()})
            }).collect::<Vec<_>>()}),
            Err(ReflectError::NotServed) => json!({"served": false, "error": ReflectError::NotServed.to_string()}),
            Err(e) => json!({"served": true, "error": e.to_string()}),
        },
        "logs": logs.iter().map(|l| json!({
            "level": l.level.to_string(), "message": l.message, "module": l.module,
            "fields": l.fields.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "text": render_log(l), "raw": l.raw,
        })).collect::<Vec<_>>(),
        "shutdown": {
            "result": "ok",
            "took_ms": ms(close_took),
            "exit_status": exit_status.map(|s| s.to_string()),
            "exit_code": exit_status.and_then(|s| s.code()),
            "process_left": process_left,
            "socket_left": socket_left,
        },
    });
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_text(options, &report, &services);
    }
    if process_left || socket_left {
        return exit::PLUGIN;
    }
    exit::OK
}

fn print_text(options: &Options, report: &Value, services: &Services) {
    print_connection(options, report);
    print_services(services);
    print_logs_and_shutdown(options, report);
}

/// A JSON value as text: strings without their quotes.
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The handshake, version, TLS, timings and health.
fn print_connection(options: &Options, report: &Value) {
    let h = &report["handshake"];
    println!("plugin       {}", s(&report["plugin"]));
    println!(
        "handshake    core {} | app version {} | {} {} | protocol {} | server certificate {}{}",
        h["core_version"],
        h["app_version"],
        s(&h["network"]),
        s(&h["address"]),
        s(&h["protocol"]),
        if h["server_certificate_sent"] == true {
            "sent"
        } else {
            "not sent"
        },
        if h["multiplexed_brokering"] == true {
            " | multiplexed brokering offered"
        } else {
            ""
        },
    );
    let offered: Vec<String> = options.versions.iter().map(u32::to_string).collect();
    println!(
        "version      {} (offered {})",
        report["negotiated_version"],
        offered.join(",")
    );
    let tls = &report["tls"];
    println!("tls          {}", s(&tls["mode"]));
    let cert = &tls["certificate"];
    if cert.get("subject").is_some() {
        println!("certificate  subject {}", s(&cert["subject"]));
        println!("             key {}", s(&cert["key"]));
        println!(
            "             valid {} to {}",
            s(&cert["not_before"]),
            s(&cert["not_after"])
        );
    } else if let Some(e) = cert.get("error") {
        println!("certificate  unreadable: {}", s(e));
    }
    let t = &report["timings_ms"];
    println!(
        "timings      spawn {} ms, handshake {} ms, connect {} ms, health {} ms (total {} ms)",
        t["spawn"], t["handshake"], t["connect"], t["health"], t["total"]
    );
    println!("health       {}", s(&report["health"]));
}

/// The services and methods reflection listed.
fn print_services(services: &Services) {
    match services {
        Ok(list) => {
            println!("services     {} (from gRPC reflection)", list.len());
            for (name, methods) in list {
                println!("  {name}");
                match methods {
                    Ok(methods) => {
                        for m in methods {
                            let stream = |on: bool| if on { "stream " } else { "" };
                            println!(
                                "    {}({}{}) returns ({}{})",
                                m.name,
                                stream(m.client_streaming),
                                m.input,
                                stream(m.server_streaming),
                                m.output
                            );
                        }
                    }
                    Err(e) => println!("    (methods unknown: {e})"),
                }
            }
        }
        Err(e) => println!("services     unknown: {e}"),
    }
}

/// The plugin's log lines, then how it shut down and what was left.
fn print_logs_and_shutdown(options: &Options, report: &Value) {
    let logs = report["logs"].as_array().cloned().unwrap_or_default();
    println!("logs         {} line(s) on stderr", logs.len());
    for line in &logs {
        println!("  [{}] {}", s(&line["level"]), s(&line["text"]));
    }
    let d = &report["shutdown"];
    let exit = match d["exit_status"].as_str() {
        Some(status) => status.to_owned(),
        None if options.attach.is_some() => "not ours to stop (attached): disconnected".to_owned(),
        None => "unknown".to_owned(),
    };
    println!(
        "shutdown     {} in {} ms; {}",
        if d["result"] == "ok" {
            "closed".to_owned()
        } else {
            s(&d["result"])
        },
        d["took_ms"],
        exit
    );
    let left = match (d["process_left"] == true, d["socket_left"] == true) {
        (false, false) => "nothing left: process reaped, socket removed".to_owned(),
        (p, sk) => format!(
            "LEFT BEHIND:{}{}",
            if p { " the process" } else { "" },
            if sk { " the socket file" } else { "" }
        ),
    };
    println!("             {left}");
}
