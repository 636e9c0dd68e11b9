//! The standalone `wshub` server's parts, as a library so that the binary, its tests and
//! the fuzz targets share them.
//!
//! - [`settings`]: every config key in one table; defaults < TOML file < `WSHUB_*` < flags.
//! - [`sinks`]: where inbound messages go besides chat: a webhook or stdio.

pub mod settings;
pub mod sinks;
