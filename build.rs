//! Compiles the contract in `proto/` with protox (no system `protoc`), writes the encoded
//! descriptor set to `OUT_DIR` for gRPC reflection, and writes the `Debug` impls of the
//! messages that carry a secret (see [`SECRET_FIELDS`]), included by `src/proto.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::{env, fs, path::PathBuf};

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

/// Fields that hold a secret (a password, a private key, a bearer token or key), by name in
/// any message. prost's derived `Debug` would print them into every log line, error or
/// panic message that formats their message; the messages that have one get a generated
/// `Debug` instead that prints them as `[redacted]`. By name rather than by message, so that
/// a new message with such a field is covered without a change here; a secret under a new
/// name is added here (tests/secrets.rs fails until it is).
const SECRET_FIELDS: &[&str] = &[
    "password",
    "client_key_pem",
    "private_key_pem",
    "client_secret",
    "secret",
    "token",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mailroom/v1/api_keys.proto",
        "proto/mailroom/v1/directory.proto",
        "proto/mailroom/v1/notifier.proto",
        "proto/mailroom/v1/smtp.proto",
        "proto/mailroom/v1/templates.proto",
        "proto/mailroom/v1/token.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("mailroom_descriptor.bin"), fds.encode_to_vec())?;
    let redacted = RedactedDebug::of(&fds);
    for (package, code) in &redacted.code {
        fs::write(out.join(format!("{package}.redacted.rs")), code)?;
    }
    tonic_prost_build::configure()
        .skip_debug(&redacted.skipped)
        .compile_fds(fds)?;
    Ok(())
}

/// The hand-made `Debug` of every message with a secret field.
struct RedactedDebug {
    /// Their proto paths (`.mailroom.v1.SmtpSettings`), whose derived `Debug` is skipped.
    skipped: Vec<String>,
    /// The impls, by package.
    code: BTreeMap<String, String>,
}

impl RedactedDebug {
    fn of(fds: &FileDescriptorSet) -> Self {
        let mut skipped = Vec::new();
        let mut code = BTreeMap::new();
        for file in fds
            .file
            .iter()
            .filter(|f| f.package().starts_with("mailroom."))
        {
            let package = file.package();
            let impls: &mut String = code.entry(package.to_string()).or_default();
            for message in &file.message_type {
                for nested in &message.nested_type {
                    assert!(
                        !has_secret(nested),
                        "{}.{}: build.rs does not redact secrets of nested messages yet",
                        message.name(),
                        nested.name()
                    );
                }
                if has_secret(message) {
                    skipped.push(format!(".{package}.{}", message.name()));
                    impls.push_str(&debug_impl(package, message));
                }
            }
        }
        Self { skipped, code }
    }
}

fn has_secret(message: &DescriptorProto) -> bool {
    message.field.iter().any(is_secret)
}

fn is_secret(field: &FieldDescriptorProto) -> bool {
    SECRET_FIELDS.contains(&field.name())
}

/// `Debug` as prost derives it (every field, enum values by name), but secret fields
/// printed through `super::Redacted` (src/proto.rs).
fn debug_impl(package: &str, message: &DescriptorProto) -> String {
    let context = |field: &FieldDescriptorProto| format!("{}.{}", message.name(), field.name());
    let mut fields = String::new();
    let mut oneofs = BTreeSet::new();
    for field in &message.field {
        let (label, value) = match field.oneof_index {
            // A oneof is one Rust field (an `Option` of an enum with a derived `Debug`).
            Some(i) if !field.proto3_optional() => {
                assert!(
                    !is_secret(field),
                    "{}: build.rs does not redact a secret in a oneof yet",
                    context(field)
                );
                if !oneofs.insert(i) {
                    continue;
                }
                let name = message.oneof_decl[i as usize].name();
                (name, format!("&self.{}", rust_field(name)))
            }
            _ if is_secret(field) => {
                assert!(
                    field.label() != Label::Repeated
                        && !field.proto3_optional()
                        && matches!(field.r#type(), Type::String | Type::Bytes),
                    "{}: a secret must be a singular string or bytes field",
                    context(field)
                );
                let value = format!("&super::Redacted::of(&self.{})", rust_field(field.name()));
                (field.name(), value)
            }
            _ if field.r#type() == Type::Enum => {
                assert!(
                    field.label() != Label::Repeated && !field.proto3_optional(),
                    "{}: build.rs prints only singular enum fields of messages with a secret",
                    context(field)
                );
                let value = format!(
                    "&super::EnumValue::<{}>::new(self.{})",
                    rust_type(package, field.type_name()),
                    rust_field(field.name())
                );
                (field.name(), value)
            }
            // Everything else prints as prost derives it (but for a map's enum values,
            // which would print as numbers: none of these messages has one).
            _ => (field.name(), format!("&self.{}", rust_field(field.name()))),
        };
        writeln!(fields, "            .field({label:?}, {value})").unwrap();
    }
    let name = message.name().to_upper_camel_case();
    format!(
        "impl ::core::fmt::Debug for {name} {{
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{
        f.debug_struct({name:?})
{fields}            .finish()
    }}
}}

"
    )
}

/// The Rust name prost gives a field.
fn rust_field(name: &str) -> String {
    let name = name.to_snake_case();
    match name.as_str() {
        "self" | "super" | "crate" | "extern" => format!("{name}_"),
        _ => format!("r#{name}"),
    }
}

/// The Rust path, from the package's module, of a type of `package` named `.package.A.B`.
fn rust_type(package: &str, type_name: &str) -> String {
    let local = type_name
        .strip_prefix(&format!(".{package}."))
        .unwrap_or_else(|| panic!("{type_name}: build.rs prints only types of {package}"));
    // Nested types live in a module named after their message, in snake case.
    let (modules, name) = local.rsplit_once('.').unwrap_or(("", local));
    modules
        .split('.')
        .filter(|m| !m.is_empty())
        .map(str::to_snake_case)
        .chain([name.to_upper_camel_case()])
        .collect::<Vec<_>>()
        .join("::")
}
