//! The integration suite, one test binary: each module below is one area, talking to a
//! real server over gRPC (and a real SMTP server, and etcd with the `etcd` feature).
//! One binary rather than one per file: each test binary links the whole service
//! (~55 MB unoptimised), and thirteen of them helped run a CI machine out of disk.

mod support;

mod auth;
mod directory;
mod etcd_security;
mod guard;
mod hostile;
mod line_ends;
mod metrics;
mod notifier;
mod process;
mod readme;
mod replicas;
mod rotation;
mod secrets;
mod server;
mod smtp_settings;
mod smtp_test;
mod store;
mod tenancy;
mod tls;
mod tokens;
