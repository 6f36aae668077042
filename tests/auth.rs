//! Callers: every RPC refuses a missing, unknown or revoked key, a key without its
//! permission, and a non-admin key acting for another organisation; the ApiKeys service.

use crate::support;

use mailroom::proto::v1 as pb;
use prost::Message;
use prost_reflect::{DynamicMessage, Value};
use support::{contract, violated_fields, TestServer};
use tonic::Code;

const PLATFORM: &str = "managePlatform";
const USER: &str = "manageUser";
const CONFIG: &str = "manageConfig";

/// The permission of every RPC as docs/API.md's "Permissions" table states it (the design's
/// table): `(path, permission)`.
fn permissions() -> Vec<(String, &'static str)> {
    documented()
        .into_iter()
        .map(|(path, permissions)| (path, permissions[0]))
        .collect()
}

/// docs/API.md's "Permissions" table: `(path, the permissions a key may hold one of)`; the
/// first is an organisation's call's (tests/templates.rs covers the platform's).
fn documented() -> Vec<(String, Vec<&'static str>)> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md"),
    )
    .unwrap();
    let rows = doc
        .lines()
        .skip_while(|l| !l.starts_with("| Service | RPCs | Permission |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let mut table = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [service, methods, permissions] = cells[..] else {
            panic!("a row of three cells: {row}");
        };
        let permissions: Vec<&'static str> = permissions
            .split(" or ")
            .map(|cell| {
                [PLATFORM, USER, CONFIG]
                    .into_iter()
                    .find(|p| cell == format!("`{p}`"))
                    .unwrap_or_else(|| panic!("a permission: {row}"))
            })
            .collect();
        for method in methods.split(", ") {
            table.push((
                format!(
                    "/mailroom.v1.{}/{}",
                    service.trim_matches('`'),
                    method.trim_matches('`')
                ),
                permissions.clone(),
            ));
        }
    }
    table
}

/// The code's table (`mailroom::auth::permissions::REQUIRED`, which the gate and every
/// handler check) is the documented one, row for row.
#[test]
fn the_code_s_permission_table_is_the_documented_one() {
    let _watchdog = crate::support::watchdog();
    let mut code: Vec<(String, Vec<&str>)> = mailroom::auth::permissions::REQUIRED
        .iter()
        .map(|(service, method, permissions)| {
            (
                format!("/mailroom.v1.{service}/{method}"),
                permissions.iter().map(|p| p.as_str()).collect(),
            )
        })
        .collect();
    let mut documented = documented();
    code.sort();
    documented.sort();
    assert_eq!(code, documented);
}

/// One RPC of the contract, with its permission.
struct Rpc {
    rpc: contract::Rpc,
    permission: &'static str,
}

impl Rpc {
    /// Its request, acting for `organisation` when it names one (else empty).
    fn request(&self, organisation: &str) -> Vec<u8> {
        let mut request = DynamicMessage::new(self.rpc.input.clone());
        if self.rpc.names_organisation() && !organisation.is_empty() {
            request.set_field_by_name("organisation", Value::String(organisation.into()));
        }
        request.encode_to_vec()
    }

    async fn call(&self, server: &TestServer, key: &str, organisation: &str) -> Code {
        contract::call_code(server, &self.rpc.path, key, self.request(organisation)).await
    }
}

/// Every RPC of the contract's descriptor, each with its permission from [`permissions`].
fn rpcs() -> Vec<Rpc> {
    let rpcs = contract::rpcs();
    contract::assert_table_covers(
        "docs/API.md's Permissions table",
        permissions().into_iter().map(|(path, _)| path),
        rpcs.iter().map(|rpc| rpc.path.clone()),
    );
    rpcs.into_iter()
        .map(|rpc| {
            let permission = permissions()
                .into_iter()
                .find(|(p, _)| *p == rpc.path)
                .unwrap()
                .1;
            Rpc { rpc, permission }
        })
        .collect()
}

#[tokio::test]
async fn every_rpc_checks_its_caller() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    // A key of acme with every permission (planted: the API grants managePlatform to admin
    // keys only), so that acting for another organisation is refused for that alone.
    let (server, acme) = contract::start_with_planted_key(dir.path(), "acme").await;
    let rpcs = rpcs();
    let only_config = server.create_key("admin", &["manageConfig"]).await;
    let only_user = server.create_key("admin", &["manageUser"]).await;
    let all = server
        .create_key_full("admin", &["managePlatform", "manageUser", "manageConfig"])
        .await;
    let revoked = all.secret;
    let revoke = pb::RevokeApiKeyRequest {
        id: all.key.unwrap().id,
    };
    server
        .keys(&server.admin_key)
        .revoke_api_key(revoke)
        .await
        .unwrap();

    for rpc in &rpcs {
        let path = &rpc.rpc.path;
        let lacking = if rpc.permission == CONFIG {
            &only_user
        } else {
            &only_config
        };
        assert_eq!(
            rpc.call(&server, "", "").await,
            Code::Unauthenticated,
            "{path} no key"
        );
        assert_eq!(
            rpc.call(&server, "mrk_not-a-key", "").await,
            Code::Unauthenticated,
            "{path} unknown key"
        );
        assert_eq!(
            rpc.call(&server, &revoked, "").await,
            Code::Unauthenticated,
            "{path} revoked"
        );
        assert_eq!(
            rpc.call(&server, lacking, "").await,
            Code::PermissionDenied,
            "{path} without {}",
            rpc.permission
        );
        if rpc.rpc.names_organisation() {
            let status = contract::call(&server, path, &acme, rpc.request("other-org"))
                .await
                .expect_err("acme acting for other-org");
            assert!(
                contract::refused_for_organisation(&status),
                "{path}: acme acting for other-org is refused for the organisation: {status:?}"
            );
        }
        let admin = rpc.call(&server, &server.admin_key, "acme").await;
        assert!(
            !matches!(admin, Code::Unauthenticated | Code::PermissionDenied),
            "{path}: the admin key may call it for any organisation, got {admin:?}"
        );
    }
}

#[tokio::test]
async fn a_key_acts_for_its_own_organisation() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let acme = server.create_key("acme", &["manageUser"]).await;
    let issue = rpcs()
        .into_iter()
        .find(|r| r.rpc.path.ends_with("/IssueToken"))
        .unwrap();
    let own = issue.call(&server, &acme, "acme").await;
    assert!(
        !matches!(own, Code::Unauthenticated | Code::PermissionDenied),
        "{own:?}"
    );
}

#[tokio::test]
async fn the_bootstrap_key_file_is_private_and_names_an_admin_key() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let path = server.data_dir.join("admin.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let master = std::fs::metadata(server.data_dir.join("master.key")).unwrap();
        assert_eq!(master.permissions().mode() & 0o777, 0o600);
    }
    assert!(server.admin_key.starts_with("mrk_"));
    let keys = server
        .keys(&server.admin_key)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "bootstrap-admin");
    assert_eq!(keys[0].organisation, "admin");
    assert_eq!(
        keys[0].permissions,
        ["managePlatform", "manageUser", "manageConfig"]
    );
}

#[tokio::test]
async fn create_list_and_revoke_keys() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut keys = server.keys(&server.admin_key);
    let created = keys
        .create_api_key(pb::CreateApiKeyRequest {
            name: "cortex".into(),
            organisation: "acme".into(),
            permissions: vec!["manageConfig".into(), "manageUser".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    assert!(created.secret.starts_with("mrk_") && created.secret.len() >= 4 + 43);
    assert_eq!(key.organisation, "acme");
    assert_eq!(key.permissions, ["manageUser", "manageConfig"]);
    assert!(!key.revoked);

    let listed = keys
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 2);
    assert!(
        !format!("{listed:?}").contains(&created.secret),
        "secrets are shown once"
    );

    let revoked = keys
        .revoke_api_key(pb::RevokeApiKeyRequest { id: key.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let status = keys
        .revoke_api_key(pb::RevokeApiKeyRequest {
            id: "key_unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_key_requests_name_their_fields() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut keys = server.keys(&server.admin_key);
    let status = keys
        .create_api_key(pb::CreateApiKeyRequest {
            name: String::new(),
            organisation: "acme".into(),
            permissions: vec!["managePlatform".into(), "fly".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["name", "permissions[0]", "permissions[1]"]
    );
    let status = keys
        .create_api_key(pb::CreateApiKeyRequest {
            name: "x".into(),
            organisation: "admin".into(),
            permissions: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["permissions"]);
    let status = keys
        .list_api_keys(pb::ListApiKeysRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = keys
        .list_api_keys(pb::ListApiKeysRequest {
            page_size: 1,
            page_token: "@@".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn a_key_cannot_revoke_itself() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut keys = server.keys(&server.admin_key);
    let own = keys
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys[0]
        .id
        .clone();
    let status = keys
        .revoke_api_key(pb::RevokeApiKeyRequest { id: own })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn keys_list_in_pages() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    for _ in 0..4 {
        server.create_key("acme", &["manageUser"]).await;
    }
    let mut keys = server.keys(&server.admin_key);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = keys
            .list_api_keys(pb::ListApiKeysRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 5);
    assert_eq!(unique.len(), 5);
}

/// A revoked key is dead at once: calls with it race its revocation on real threads, and
/// none that starts after the revocation's answer succeeds (the key cache must not put back
/// a key a lookup read before the revocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_call_that_starts_after_a_revocation_succeeds() {
    let _watchdog = crate::support::watchdog();
    use std::sync::{Arc, OnceLock};
    use tokio::time::Instant;

    let server = TestServer::start().await;
    let victim = server.create_key_full("acme", &["manageUser"]).await;
    let revoked_at: Arc<OnceLock<Instant>> = Arc::default();
    let succeeded = Arc::new(tokio::sync::Semaphore::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let mut directory = server.directory(&victim.secret);
            let (revoked_at, succeeded) = (revoked_at.clone(), succeeded.clone());
            tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut after = 0;
                // Calls until 50 of them started after the revocation answered.
                while after < 50 {
                    let start = Instant::now();
                    let ok = directory
                        .list_users(pb::ListUsersRequest::default())
                        .await
                        .is_ok();
                    if ok {
                        succeeded.add_permits(1);
                    }
                    if revoked_at.get().is_some_and(|at| start > *at) {
                        after += 1;
                    }
                    calls.push((start, ok));
                }
                calls
            })
        })
        .collect();
    // The key is cached and in use on every thread before it is revoked.
    drop(succeeded.acquire_many(200).await.unwrap());
    server
        .keys(&server.admin_key)
        .revoke_api_key(pb::RevokeApiKeyRequest {
            id: victim.key.unwrap().id,
        })
        .await
        .expect("revoke");
    let at = Instant::now();
    revoked_at.set(at).unwrap();
    let mut late = 0;
    for caller in callers {
        for (start, ok) in caller.await.unwrap() {
            if start > at {
                assert!(!ok, "a call started after the revocation succeeded");
                late += 1;
            }
        }
    }
    assert!(late >= 400, "only {late} calls after the revocation");
}
