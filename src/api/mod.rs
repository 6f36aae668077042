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

use crate::auth::{self, permissions::Needed, Authenticated, Caller, Permission};

/// The caller of a request that passed the gate ([`gate`]: its key, and the permission its
/// method needs): see [`auth::authorize`].
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    let extensions = request.extensions();
    Ok(auth::authorize(
        extensions.get::<Authenticated>(),
        extensions.get::<Needed>(),
    )?)
}

/// That the caller of `request` (see [`caller`]) also holds `permission`.
pub(crate) fn require<T>(
    request: &tonic::Request<T>,
    permission: Permission,
) -> Result<(), tonic::Status> {
    Ok(auth::require(request.extensions().get(), permission)?)
}
