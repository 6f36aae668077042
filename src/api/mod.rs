//! The gRPC adapters: one per service. Each authorizes the caller, turns the request into
//! domain values, calls the domain, and turns the answer (or error) back. No logic lives
//! here; conversions are in `convert.rs`, error mapping in `status.rs`.

pub mod api_keys;
pub mod convert;
pub mod directory;
pub mod gate;
pub mod notifier;
pub mod smtp_admin;
pub mod status;
pub mod templates;
pub mod token;
