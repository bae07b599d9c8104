//! The plugin side: serve gRPC services as a go-plugin plugin. [`server`] is the facade
//! (`PluginServer` and `serve`), [`listen`] opens the sockets the plugin announces. Public as
//! `rpcplugin::server`.

pub(crate) mod listen;
pub(crate) mod server;
