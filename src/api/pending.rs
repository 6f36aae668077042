//! What the RPCs of services still being built answer: the caller is checked as the
//! finished RPC will check it, then `UNIMPLEMENTED`.

use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::auth::{Authenticator, Permission};

/// Checks the caller (permission, and the organisation acted for when the request names
/// one), then answers `UNIMPLEMENTED`.
pub async fn pending(
    auth: &Authenticator,
    metadata: &MetadataMap,
    permission: Permission,
    organisation: Option<&str>,
    rpc: &str,
) -> Status {
    let caller = match auth.authorize(metadata, permission).await {
        Ok(caller) => caller,
        Err(e) => return e.into(),
    };
    if let Some(organisation) = organisation {
        if let Err(e) = caller.act_for(organisation) {
            return e.into();
        }
    }
    Status::unimplemented(format!("{rpc} is not implemented yet"))
}
