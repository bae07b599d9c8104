//! The protocol's services, one file each, both sides of each: what the plugin serves and how
//! the host calls it. Built on `rpc` (calls and handlers) and the generated `proto` stubs.

pub(crate) mod broker;
pub(crate) mod controller;
pub(crate) mod health;
pub(crate) mod reflection;
pub(crate) mod stdio;
