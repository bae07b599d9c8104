//! `rpcplugin`: launch any go-plugin binary, show what it negotiates and serves, call a method.
//!
//! ```text
//! rpcplugin inspect [OPTIONS] <PLUGIN> [-- ARGS...]
//! rpcplugin call [OPTIONS] <PLUGIN> <SERVICE/METHOD> [--data JSON] [-- ARGS...]
//! rpcplugin tf schema [--address ADDR] [OPTIONS] <PROVIDER> [-- ARGS...]
//! ```
//!
//! Built on the `rpcplugin` library's public API only. See `rpcplugin --help` for the options
//! and exit codes.

mod call;
mod inspect;
mod json;
mod options;
mod reflect;
mod tf;

use std::process::ExitCode;

use options::{Command, Options};

/// Exit codes (also in `--help` and the README).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The plugin could not be started, connected to or shut down cleanly.
    pub const PLUGIN: u8 = 1;
    /// Bad command line, or no magic cookie given (the plugin's own message is shown).
    pub const USAGE: u8 = 2;
    /// `call`: the method answered with an error status.
    pub const CALL_FAILED: u8 = 3;
    /// `call`: the request could not be built: no reflection, unknown method, JSON that does not
    /// fit the request type, or a client-streaming method.
    pub const REQUEST: u8 = 4;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{}", options::HELP);
            return ExitCode::from(exit::OK);
        }
        Err(message) => {
            eprintln!("rpcplugin: {message}\n\nRun `rpcplugin --help` for usage.");
            return ExitCode::from(exit::USAGE);
        }
    };
    if options.cookie.is_none() && options.attach.is_none() {
        return ExitCode::from(options::run_without_cookie(&options));
    }
    let code = match &options.command {
        Command::Inspect => inspect::run(&options),
        Command::Call { method, data } => call::run(&options, method, data),
        Command::TfSchema { address } => tf::schema(&options, address.as_deref()),
    };
    ExitCode::from(code)
}
