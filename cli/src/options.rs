//! The command line, the well-known hosts' handshakes, and the start of a plugin from it.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpcplugin::{ClientConfig, LogLine, ReattachConfig, RpcPluginClient};

pub const HELP: &str = "\
rpcplugin: launch a HashiCorp go-plugin binary, show what it negotiates and serves, call a method.

USAGE:
    rpcplugin inspect [OPTIONS] <PLUGIN> [-- ARGS...]
    rpcplugin call [OPTIONS] <PLUGIN> <SERVICE/METHOD> [--data JSON] [-- ARGS...]
    rpcplugin inspect|call --attach JSON [OPTIONS] ...   (no PLUGIN: attach to a running one)
    rpcplugin tf schema [--address ADDR] [OPTIONS] <PROVIDER> [-- ARGS...]

inspect   starts the plugin and prints the handshake, the negotiated version, TLS and the
          plugin's certificate, the stage timings, health, every service and method it serves
          (from gRPC reflection), its log lines, then shuts it down and checks nothing is left.
call      starts the plugin, builds the request from reflection descriptors and --data,
          calls the method and prints the reply as JSON (one document per message for a
          server-streaming method), then shuts the plugin down.
tf schema starts a Terraform provider (protocol 5 or 6; the terraform preset is implied) and
          prints its schema exactly as `terraform providers schema -json` does for it, under
          --address (default registry.terraform.io/hashicorp/TYPE, TYPE from the file name
          terraform-provider-TYPE).

OPTIONS:
    --preset NAME        the handshake of a well-known host: terraform (versions 5,6),
                         vault (backend plugins, 5), vault-database (5,6), nomad (2)
    --cookie KEY=VALUE   the magic cookie the plugin expects; without it (and without a preset)
                         the plugin is run once as is and its own message shown
    --versions LIST      protocol versions to offer, e.g. 5,6 (default: the preset's, else 1)
    --plain              no auto mTLS (default: auto mTLS, as go-plugin hosts offer)
    --multiplex          ask for multiplexed brokering (PLUGIN_MULTIPLEX_GRPC): every gRPC
                         connection as a yamux stream in the plugin's one socket
    --env KEY=VALUE      extra environment for the plugin (repeatable)
    --attach JSON        attach to a running plugin: TF_REATTACH_PROVIDERS JSON (the first
                         provider is used); it is only disconnected, not stopped
    --timeout SECS       start timeout (default 30)
    --json               inspect: print one JSON document instead of text
    --data JSON          call: the request as JSON (default {})
    -h, --help           this help

EXIT CODES:
    0  success
    1  the plugin could not be started, connected to, or shut down cleanly (the error says
       why, with the plugin's exit status and last stderr lines when it died)
    2  bad command line, or no magic cookie given
    3  call: the method answered with an error status
    4  call: the request could not be built (no reflection, unknown method, JSON that does
       not fit, or a client-streaming method)
";

/// A well-known host's handshake: cookie key, cookie value, versions it offers.
pub struct Preset {
    pub name: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub versions: &'static [u32],
}

/// Looked up in each host's sources (see the README's `rpcplugin` section for the files).
pub const PRESETS: &[Preset] = &[
    // hashicorp/terraform internal/plugin/serve.go (Handshake) and plugin.go (VersionedPlugins);
    // terraform-plugin-go tf5server/tf6server.
    Preset {
        name: "terraform",
        key: "TF_PLUGIN_MAGIC_COOKIE",
        value: "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
        versions: &[5, 6],
    },
    // hashicorp/vault sdk/plugin/serve.go (HandshakeConfig), plugin_v5.go.
    Preset {
        name: "vault",
        key: "VAULT_BACKEND_PLUGIN",
        value: "6669da05-b1c8-4f49-97d9-c8e5bed98e20",
        versions: &[5],
    },
    // hashicorp/vault sdk/database/dbplugin/v5/grpc_database_plugin.go (HandshakeConfig),
    // plugin_client.go (PluginSets: 5, and 6 for the multiplexed variant).
    Preset {
        name: "vault-database",
        key: "VAULT_DATABASE_PLUGIN",
        value: "926a0820-aea2-be28-51d6-83cdf00e8edb",
        versions: &[5, 6],
    },
    // hashicorp/nomad plugins/base/plugin.go (Handshake: version 2, gRPC since 0.9).
    Preset {
        name: "nomad",
        key: "NOMAD_PLUGIN_MAGIC_COOKIE",
        value: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
        versions: &[2],
    },
];

pub enum Command {
    Inspect,
    Call { method: String, data: String },
    TfSchema { address: Option<String> },
}

pub struct Options {
    pub command: Command,
    pub program: Option<String>,
    pub args: Vec<String>,
    pub cookie: Option<(String, String)>,
    pub versions: Vec<u32>,
    pub plain: bool,
    pub multiplex: bool,
    pub env: Vec<(String, String)>,
    pub attach: Option<ReattachConfig>,
    pub timeout: Duration,
    pub json: bool,
}

fn key_value(flag: &str, value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{flag} expects KEY=VALUE, got {value:?}")),
    }
}

/// The command line after the command, as given.
#[derive(Default)]
struct Flags {
    positional: Vec<String>,
    cookie: Option<(String, String)>,
    versions: Option<Vec<u32>>,
    preset_versions: Option<Vec<u32>>,
    plain: bool,
    json: bool,
    multiplex: bool,
    data: Option<String>,
    env: Vec<(String, String)>,
    attach: Option<ReattachConfig>,
    timeout: Option<Duration>,
    address: Option<String>,
    plugin_args: Vec<String>,
}

impl Flags {
    /// `Ok(None)`: help was asked for.
    fn parse(args: &[String], call: bool, tf: bool) -> Result<Option<Flags>, String> {
        let mut flags = Flags::default();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let mut value = |flag: &str| {
                rest.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} expects a value"))
            };
            match arg.as_str() {
                "--" => {
                    flags.plugin_args.extend(rest.by_ref().cloned());
                    break;
                }
                "-h" | "--help" => return Ok(None),
                "--preset" => {
                    let preset = preset(&value("--preset")?)?;
                    flags.cookie = Some((preset.key.to_owned(), preset.value.to_owned()));
                    flags.preset_versions = Some(preset.versions.to_vec());
                }
                "--cookie" => flags.cookie = Some(key_value("--cookie", &value("--cookie")?)?),
                "--versions" => flags.versions = Some(versions(&value("--versions")?)?),
                "--plain" => flags.plain = true,
                "--multiplex" => flags.multiplex = true,
                "--json" => flags.json = true,
                "--env" => flags.env.push(key_value("--env", &value("--env")?)?),
                "--data" if call => flags.data = Some(value("--data")?),
                "--timeout" => flags.timeout = Some(timeout(&value("--timeout")?)?),
                "--attach" => flags.attach = Some(attach(&value("--attach")?)?),
                "--address" if tf => flags.address = Some(value("--address")?),
                flag if flag.starts_with('-') => {
                    return Err(format!("unknown option {flag:?}"));
                }
                _ => flags.positional.push(arg.clone()),
            }
        }
        Ok(Some(flags))
    }

    /// Checks the positional arguments and settles the defaults.
    fn into_options(mut self, call: bool) -> Result<Options, String> {
        let want = usize::from(self.attach.is_none()) + usize::from(call);
        if self.positional.len() != want {
            let expected = match (self.attach.is_some(), call) {
                (false, false) => "<PLUGIN>",
                (false, true) => "<PLUGIN> <SERVICE/METHOD>",
                (true, false) => "no PLUGIN with --attach",
                (true, true) => "<SERVICE/METHOD> (no PLUGIN with --attach)",
            };
            return Err(format!(
                "expected {expected}, got {} argument(s): {:?}",
                self.positional.len(),
                self.positional
            ));
        }
        let method = if call { self.positional.pop() } else { None };
        let program = self.positional.pop();
        let command = match method {
            Some(method) => Command::Call {
                method,
                data: self.data.unwrap_or_else(|| "{}".to_owned()),
            },
            None => Command::Inspect,
        };
        let mut cookie = self.cookie;
        if self.attach.is_some() && cookie.is_none() {
            // An attached plugin has already done its handshake: no cookie is involved.
            cookie = Some(("RPCPLUGIN_ATTACHED".to_owned(), String::new()));
        }
        Ok(Options {
            command,
            program,
            args: self.plugin_args,
            cookie,
            versions: self
                .versions
                .or(self.preset_versions)
                .unwrap_or_else(|| vec![1]),
            plain: self.plain,
            multiplex: self.multiplex,
            env: self.env,
            attach: self.attach,
            timeout: self.timeout.unwrap_or(Duration::from_secs(30)),
            json: self.json,
        })
    }
}

/// `--preset NAME`.
fn preset(name: &str) -> Result<&'static Preset, String> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        format!(
            "unknown preset {name:?}: expected one of {}",
            names.join(", ")
        )
    })
}

/// `--versions 5,6`.
fn versions(list: &str) -> Result<Vec<u32>, String> {
    let parsed: Result<Vec<u32>, _> = list.split(',').map(|v| v.trim().parse::<u32>()).collect();
    match parsed {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!(
            "--versions expects a comma-separated list of numbers, got {list:?}"
        )),
    }
}

/// `--timeout SECS` (fractions allowed).
fn timeout(secs: &str) -> Result<Duration, String> {
    secs.parse()
        .ok()
        .filter(|s: &f64| *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("--timeout expects seconds, got {secs:?}"))
}

/// `--attach JSON`: the first provider of a `TF_REATTACH_PROVIDERS` document, never owned.
fn attach(json: &str) -> Result<ReattachConfig, String> {
    let parsed = ReattachConfig::from_tf_reattach_providers(json)
        .map_err(|e| format!("--attach: {}", e.message()))?;
    let (_, config) = parsed
        .into_iter()
        .next()
        .ok_or("--attach: the JSON names no provider")?;
    Ok(ReattachConfig {
        // Inspecting someone else's plugin must not stop it.
        owned: false,
        ..config
    })
}

impl Options {
    /// `Ok(None)`: help was asked for.
    pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let Some(first) = args.first() else {
            return Ok(None);
        };
        let call = match first.as_str() {
            "-h" | "--help" | "help" => return Ok(None),
            "inspect" => false,
            "call" => true,
            "tf" => return Options::parse_tf(&args[1..]),
            other => {
                return Err(format!(
                    "unknown command {other:?}: expected `inspect`, `call` or `tf schema`"
                ))
            }
        };
        match Flags::parse(&args[1..], call, false)? {
            Some(flags) => flags.into_options(call).map(Some),
            None => Ok(None),
        }
    }

    /// `tf schema ...`: a provider with the terraform preset's handshake.
    fn parse_tf(args: &[String]) -> Result<Option<Options>, String> {
        match args.first().map(String::as_str) {
            Some("schema") => {}
            Some("-h" | "--help") => return Ok(None),
            other => {
                return Err(format!(
                    "unknown tf command {other:?}: expected `tf schema`"
                ))
            }
        }
        let Some(mut flags) = Flags::parse(&args[1..], false, true)? else {
            return Ok(None);
        };
        let terraform = preset("terraform")?;
        flags
            .cookie
            .get_or_insert_with(|| (terraform.key.to_owned(), terraform.value.to_owned()));
        flags
            .preset_versions
            .get_or_insert_with(|| terraform.versions.to_vec());
        let address = flags.address.take();
        let mut options = flags.into_options(false)?;
        options.command = Command::TfSchema { address };
        Ok(Some(options))
    }

    /// The client configuration these options describe; log lines go to `logs`.
    pub fn config(&self, logs: &Arc<Mutex<Vec<LogLine>>>) -> ClientConfig {
        let (key, value) = self.cookie.clone().unwrap_or_default();
        let logs = logs.clone();
        let mut config = ClientConfig::new()
            .magic_cookie(key, value)
            .protocol_versions(self.versions.iter().copied())
            .auto_mtls(!self.plain)
            .grpc_broker_multiplex(self.multiplex)
            .start_timeout(self.timeout)
            .on_log_line(move |line| {
                logs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone())
            });
        for (k, v) in &self.env {
            config = config.env(k, v);
        }
        config
    }

    /// Launches (or attaches to) the plugin; a failure is reported on stderr and becomes the
    /// exit code.
    pub fn start(&self, logs: &Arc<Mutex<Vec<LogLine>>>) -> Result<RpcPluginClient, u8> {
        self.try_start(logs).map_err(|e| {
            eprintln!("rpcplugin: {e}");
            crate::exit::PLUGIN
        })
    }

    fn try_start(&self, logs: &Arc<Mutex<Vec<LogLine>>>) -> rpcplugin::Result<RpcPluginClient> {
        let config = self.config(logs);
        let client = match &self.attach {
            Some(reattach) => RpcPluginClient::attach(reattach.clone(), config)?,
            None => {
                let mut command = vec![self.program.clone().unwrap_or_default()];
                command.extend(self.args.iter().cloned());
                RpcPluginClient::new(command, config)
            }
        };
        client.start()?;
        Ok(client)
    }

    /// How the plugin was named, for the report.
    pub fn describe_plugin(&self) -> String {
        match (&self.attach, &self.program) {
            (Some(a), _) => format!("attached: pid {} at {}", a.pid, a.address),
            (None, Some(p)) if self.args.is_empty() => p.clone(),
            (None, Some(p)) => format!("{p} {}", self.args.join(" ")),
            (None, None) => String::new(),
        }
    }
}

/// No cookie was given: run the binary once as it is, the way a user would, and show what it
/// says (go-plugin plugins print that they are plugins and exit), then say how to go on.
pub fn run_without_cookie(options: &Options) -> u8 {
    let program = options.program.clone().unwrap_or_default();
    eprintln!(
        "rpcplugin: no magic cookie given (--cookie KEY=VALUE or --preset NAME); running {program} \
         once without one to show what it says:\n"
    );
    let child = std::process::Command::new(&program)
        .args(&options.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("rpcplugin: cannot run {program}: {e}");
            return crate::exit::USAGE;
        }
    };
    // Both pipes are read while the binary runs (so a chatty one never blocks on a full pipe),
    // each on a thread with a deadline (so a leftover process holding them open cannot hang
    // us). A binary that does not exit on its own (not a go-plugin plugin, or one that ignores
    // the cookie) is stopped after 5 s.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|pipe| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.take(64 * 1024).read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        rx
    })
    .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut out = String::new();
    for reader in readers {
        if let Ok(bytes) = reader.recv_timeout(Duration::from_secs(1)) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    for line in out.lines() {
        eprintln!("    {line}");
    }
    match status {
        Some(status) => eprintln!("\n{program} exited: {status}."),
        None => eprintln!("\n{program} was still running after 5 s and was stopped."),
    }
    let presets: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    eprintln!(
        "Give the cookie its host uses: --cookie KEY=VALUE, or --preset {}.",
        presets.join("|")
    );
    crate::exit::USAGE
}
