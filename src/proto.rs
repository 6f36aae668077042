//! The generated contract (`proto/mailroom/v1`), and its descriptor set for reflection.
//!
//! Messages with a secret field (a password, a private key, a bearer token or key: see
//! `SECRET_FIELDS` in build.rs) print it as `[redacted]` under `Debug`, so that formatting a
//! request or response into a log line or an error never shows the secret.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

use std::fmt;
use std::marker::PhantomData;

/// Package `mailroom.v1`.
pub mod v1 {
    tonic::include_proto!("mailroom.v1");
    // The `Debug` of the messages with a secret field, written by build.rs.
    include!(concat!(env!("OUT_DIR"), "/mailroom.v1.redacted.rs"));
}

/// The encoded `FileDescriptorSet` of every mailroom proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mailroom_descriptor.bin"));

/// A secret field under `Debug`: `[redacted]`, or `""` when it is empty, so that a log still
/// tells whether one was given.
struct Redacted {
    empty: bool,
}

impl Redacted {
    fn of(value: &impl AsRef<[u8]>) -> Self {
        Self {
            empty: value.as_ref().is_empty(),
        }
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.empty { "\"\"" } else { "[redacted]" })
    }
}

/// An enum field under `Debug` as prost derives it: the value's name, or the number when
/// this version does not know it.
struct EnumValue<E> {
    value: i32,
    enumeration: PhantomData<E>,
}

impl<E> EnumValue<E> {
    fn new(value: i32) -> Self {
        Self {
            value,
            enumeration: PhantomData,
        }
    }
}

impl<E: TryFrom<i32> + fmt::Debug> fmt::Debug for EnumValue<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match E::try_from(self.value) {
            Ok(known) => known.fmt(f),
            Err(_) => self.value.fmt(f),
        }
    }
}
