//! Callers: every RPC refuses a missing, unknown or revoked key, a key without its
//! permission, and a non-admin key acting for another organisation; the ApiKeys service.

use crate::support;

use mailroom::proto::v1 as pb;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use support::{violated_fields, Bearer, TestServer};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::Interceptor;
use tonic::{Code, Request};

/// An already-encoded request, so that one table can call every RPC.
#[derive(Clone, Debug, Default)]
struct Raw(Vec<u8>);

impl Message for Raw {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// One RPC: its path, its permission, and its request acting for an organisation (the
/// organisation is ignored by RPCs that name none).
struct Rpc {
    path: &'static str,
    permission: &'static str,
    request: fn(&str) -> Raw,
    names_organisation: bool,
}

fn raw(m: impl Message) -> Raw {
    Raw(m.encode_to_vec())
}

fn rpcs() -> Vec<Rpc> {
    const PLATFORM: &str = "managePlatform";
    const USER: &str = "manageUser";
    const CONFIG: &str = "manageConfig";
    fn rpc(path: &'static str, permission: &'static str, request: fn(&str) -> Raw) -> Rpc {
        Rpc {
            path,
            permission,
            request,
            names_organisation: false,
        }
    }
    fn scoped(path: &'static str, permission: &'static str, request: fn(&str) -> Raw) -> Rpc {
        Rpc {
            path,
            permission,
            request,
            names_organisation: true,
        }
    }
    vec![
        rpc("/mailroom.v1.SmtpAdmin/GetSmtpSettings", PLATFORM, |_| {
            Raw::default()
        }),
        rpc(
            "/mailroom.v1.SmtpAdmin/UpdateSmtpSettings",
            PLATFORM,
            |_| Raw::default(),
        ),
        rpc("/mailroom.v1.SmtpAdmin/TestSmtpSettings", PLATFORM, |_| {
            Raw::default()
        }),
        scoped("/mailroom.v1.Token/IssueToken", USER, |o| {
            raw(pb::IssueTokenRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        rpc("/mailroom.v1.Token/VerifyToken", USER, |_| Raw::default()),
        rpc("/mailroom.v1.Token/ConsumeToken", USER, |_| Raw::default()),
        scoped("/mailroom.v1.Token/RevokeTokens", USER, |o| {
            raw(pb::RevokeTokensRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        scoped("/mailroom.v1.Token/ListTokens", USER, |o| {
            raw(pb::ListTokensRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        scoped("/mailroom.v1.Notifier/SendToAddresses", CONFIG, |o| {
            raw(pb::SendToAddressesRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        scoped("/mailroom.v1.Notifier/SendToUsers", CONFIG, |o| {
            raw(pb::SendToUsersRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        scoped("/mailroom.v1.Notifier/SendAccountNotice", USER, |o| {
            raw(pb::SendAccountNoticeRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        rpc("/mailroom.v1.Notifier/GetMessage", CONFIG, |_| {
            Raw::default()
        }),
        scoped("/mailroom.v1.Notifier/ListMessages", CONFIG, |o| {
            raw(pb::ListMessagesRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        rpc("/mailroom.v1.Notifier/RetryMessage", CONFIG, |_| {
            Raw::default()
        }),
        rpc("/mailroom.v1.Notifier/CancelMessage", CONFIG, |_| {
            Raw::default()
        }),
        rpc("/mailroom.v1.Directory/UpsertUser", USER, |_| {
            Raw::default()
        }),
        rpc("/mailroom.v1.Directory/GetUser", USER, |_| Raw::default()),
        rpc("/mailroom.v1.Directory/DeleteUser", USER, |_| {
            Raw::default()
        }),
        scoped("/mailroom.v1.Directory/ListUsers", USER, |o| {
            raw(pb::ListUsersRequest {
                organisation: o.into(),
                ..Default::default()
            })
        }),
        scoped("/mailroom.v1.ApiKeys/CreateApiKey", PLATFORM, |o| {
            raw(pb::CreateApiKeyRequest {
                name: "k".into(),
                organisation: o.into(),
                permissions: vec!["manageUser".into()],
            })
        }),
        rpc("/mailroom.v1.ApiKeys/ListApiKeys", PLATFORM, |_| {
            Raw::default()
        }),
        rpc("/mailroom.v1.ApiKeys/RevokeApiKey", PLATFORM, |_| {
            Raw::default()
        }),
    ]
}

async fn call(server: &TestServer, rpc: &Rpc, key: &str, organisation: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.expect("channel ready");
    let request = Bearer::new(key)
        .call(Request::new(()))
        .unwrap()
        .map(|()| (rpc.request)(organisation));
    let codec = tonic_prost::ProstCodec::<Raw, Raw>::default();
    match grpc
        .unary(request, PathAndQuery::from_static(rpc.path), codec)
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn every_rpc_checks_its_caller() {
    let server = TestServer::start().await;
    let rpcs = rpcs();
    assert_eq!(rpcs.len(), 22, "every RPC of the contract is in the table");
    let only_config = server.create_key("admin", &["manageConfig"]).await;
    let only_user = server.create_key("admin", &["manageUser"]).await;
    let acme = server
        .create_key("acme", &["manageUser", "manageConfig"])
        .await;
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
        let lacking = if rpc.permission == "manageConfig" {
            &only_user
        } else {
            &only_config
        };
        assert_eq!(
            call(&server, rpc, "", "").await,
            Code::Unauthenticated,
            "{} no key",
            rpc.path
        );
        assert_eq!(
            call(&server, rpc, "mrk_not-a-key", "").await,
            Code::Unauthenticated,
            "{} unknown key",
            rpc.path
        );
        assert_eq!(
            call(&server, rpc, &revoked, "").await,
            Code::Unauthenticated,
            "{} revoked",
            rpc.path
        );
        assert_eq!(
            call(&server, rpc, lacking, "").await,
            Code::PermissionDenied,
            "{} without {}",
            rpc.path,
            rpc.permission
        );
        if rpc.names_organisation {
            assert_eq!(
                call(&server, rpc, &acme, "other-org").await,
                Code::PermissionDenied,
                "{} acme acting for other-org",
                rpc.path
            );
        }
        let admin = call(&server, rpc, &server.admin_key, "acme").await;
        assert!(
            !matches!(admin, Code::Unauthenticated | Code::PermissionDenied),
            "{}: the admin key may call it for any organisation, got {admin:?}",
            rpc.path
        );
    }
}

#[tokio::test]
async fn a_key_acts_for_its_own_organisation() {
    let server = TestServer::start().await;
    let acme = server.create_key("acme", &["manageUser"]).await;
    let issue = rpcs()
        .into_iter()
        .find(|r| r.path.ends_with("/IssueToken"))
        .unwrap();
    let own = call(&server, &issue, &acme, "acme").await;
    assert!(
        !matches!(own, Code::Unauthenticated | Code::PermissionDenied),
        "{own:?}"
    );
}

#[tokio::test]
async fn the_bootstrap_key_file_is_private_and_names_an_admin_key() {
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
