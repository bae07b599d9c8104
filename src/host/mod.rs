//! The host side: launch or attach to a plugin, connect, and stop it without leaving anything
//! behind. From the facade down:
//!
//! * [`client`]: `RpcPluginClient`, its state, and what it hands out;
//! * [`launch`] and [`attach`]: how a plugin comes to be, before the shared [`connect`] step
//!   (TLS, channel, streams, health);
//! * [`config`]: `ClientConfig` and `TlsConfig`;
//! * [`session`]: a started plugin and its teardown (the bound on `close` is computed there);
//! * [`process`]: the plugin process, with [`spawner`], [`tasks`] (exit and pipes on the I/O
//!   thread), [`stderr`], [`program`] and [`socket_dir`] under it.

pub(crate) mod attach;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod connect;
pub(crate) mod launch;
pub(crate) mod process;
pub(crate) mod program;
pub(crate) mod session;
pub(crate) mod socket_dir;
pub(crate) mod spawner;
pub(crate) mod stderr;
pub(crate) mod tasks;
