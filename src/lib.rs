//! mailroom: the email control plane of a security-incident platform, over gRPC.
//!
//! It holds the platform's SMTP server settings and tests them with a real email, issues
//! and redeems expiring single-use tokens for password resets and invitations, and
//! delivers notification email through that server. Callers are the platform's other
//! services, operators with `grpcurl`, and health probes.
//!
//! # Layout
//!
//! - [`config`]: the one clap [`config::Args`] struct (flags and `MAILROOM_*` variables).
//! - [`server`]: [`run`]`(listener, shutdown, args)`: wiring, health, reflection, drain.
//! - [`auth`]: API keys, permissions, organisation scoping, the per-RPC caller check.
//! - [`api`]: one gRPC adapter per service (proto ⇄ domain, error ⇄ status); no logic.
//! - [`settings`]: the SMTP settings, their rules and updates (domain: no tonic, no sled).
//! - [`notify`]: EmailerToAddr and EmailerToUser, the outbox's messages and their states.
//! - [`directory`]: the users notifications go to, each with a locale.
//! - [`locale`]: BCP 47 tags, the languages of the built-in emails, the chain that picks
//!   one for a recipient, dates and lengths of time in words.
//! - [`templates`]: the built-in emails' overrides (per organisation and for the
//!   platform), organisations' default locales, and previews.
//! - [`tokens`]: password-reset and invitation tokens and their emails.
//! - [`mail`]: SMTP: the TLS policy, lettre connections from the settings, the staged test,
//!   and the delivery workers.
//! - [`ports`]: what the domain and the store share: [`ports::StoreError`], paging, change
//!   notices and [`ports::Backend`] (flush, health, watch epoch). Each domain module defines
//!   the store trait it needs next to its records.
//! - [`store`]: the backends implementing the domain's ports (`store::sled`, and
//!   `store::etcd` for several replicas with the `etcd` feature), and [`store::Store`], all
//!   ports over one backend, for the wiring.
//! - `etcd_access` (the `etcd` feature): TLS and the etcd user, read from the files the
//!   `--etcd-*` flags name and checked before connecting.
//! - [`cache`]: settings and API keys kept in memory, forgotten when another replica
//!   changes them.
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`crypto`]: random secrets, digests, and sealing secrets at rest.
//! - [`validation`]: field violations, reported one per bad field.
//! - [`clock`]: the time the domain asks, settable in tests.
//! - [`catcher`]: `mailroom catch-mail`, the mail catcher for trying mailroom and for tests
//!   (an SMTP server that prints and files every message; not a relay).
//! - [`snapshot`]: what `mailroom export`, `import` and `migrate` move: every record as
//!   the domain holds it, the export file's format, and [`snapshot::Snapshot`], the port
//!   each backend implements for them.
//! - [`proto`]: the generated contract (`proto/mailroom/v1`).
//!
//! No `unsafe` here: the one use in the project is the allocator's option in `main.rs`.

#![forbid(unsafe_code)]

pub(crate) mod api;
pub mod auth;
pub(crate) mod cache;
pub mod catcher;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod directory;
#[cfg(feature = "etcd")]
pub(crate) mod etcd_access;
pub mod locale;
pub(crate) mod mail;
pub(crate) mod metrics;
pub mod notify;
pub(crate) mod ports;
pub mod proto;
pub(crate) mod quota;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod store;
pub mod templates;
pub mod tokens;
pub(crate) mod validation;

pub use server::run;
