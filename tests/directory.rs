//! The Directory: users round trip, validation, paging, and organisation scoping.

use crate::support;

use mailroom::proto::v1 as pb;
use support::{violated_fields, TestServer};
use tonic::Code;

fn user(login: &str, organisations: &[&str]) -> pb::User {
    pb::User {
        login: login.into(),
        name: format!("User {login}"),
        email: format!("{login}@example.com"),
        organisations: organisations.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    }
}

async fn upsert(server: &TestServer, key: &str, u: pb::User) -> Result<pb::User, tonic::Status> {
    server
        .directory(key)
        .upsert_user(pb::UpsertUserRequest { user: Some(u) })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn users_round_trip() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let saved = upsert(&server, &server.admin_key, user("alice", &["acme"]))
        .await
        .unwrap();
    assert!(saved.create_time.is_some());
    let mut directory = server.directory(&server.admin_key);
    let got = directory
        .get_user(pb::GetUserRequest {
            login: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, saved);
    let mut changed = user("alice", &["acme", "other"]);
    changed.locked = true;
    let updated = upsert(&server, &server.admin_key, changed).await.unwrap();
    assert!(updated.locked);
    assert_eq!(updated.create_time, saved.create_time, "creation time kept");
    let other = directory
        .list_users(pb::ListUsersRequest {
            organisation: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.users.len(), 1);
    directory
        .delete_user(pb::DeleteUserRequest {
            login: "alice".into(),
        })
        .await
        .unwrap();
    let gone = directory
        .get_user(pb::GetUserRequest {
            login: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let listed = directory
        .list_users(pb::ListUsersRequest {
            organisation: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.users.is_empty(), "memberships go with the user");
}

#[tokio::test]
async fn bad_users_name_their_fields() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let status = upsert(
        &server,
        &server.admin_key,
        pb::User {
            login: String::new(),
            email: "not-an-address".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["user.login", "user.email", "user.organisations"]
    );
    let status = server
        .directory(&server.admin_key)
        .upsert_user(pb::UpsertUserRequest { user: None })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["user"]);
    let status = upsert(&server, &server.admin_key, user("a\nb", &["acme"]))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["user.login", "user.name", "user.email"]
    );
}

#[tokio::test]
async fn users_list_in_pages() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    for i in 0..5 {
        upsert(
            &server,
            &server.admin_key,
            user(&format!("user{i}"), &["acme"]),
        )
        .await
        .unwrap();
    }
    upsert(&server, &server.admin_key, user("outsider", &["other"]))
        .await
        .unwrap();
    let mut directory = server.directory(&server.admin_key);
    let mut logins = Vec::new();
    let mut token = String::new();
    loop {
        let page = directory
            .list_users(pb::ListUsersRequest {
                organisation: "acme".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        logins.extend(page.users.into_iter().map(|u| u.login));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(logins, ["user0", "user1", "user2", "user3", "user4"]);
}

#[tokio::test]
async fn a_key_manages_only_its_organisation_s_users() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let acme = server.create_key("acme", &["manageUser"]).await;
    upsert(&server, &server.admin_key, user("carol", &["other"]))
        .await
        .unwrap();
    upsert(
        &server,
        &server.admin_key,
        user("shared", &["acme", "other"]),
    )
    .await
    .unwrap();

    assert!(upsert(&server, &acme, user("alice", &["acme"]))
        .await
        .is_ok());
    let status = upsert(&server, &acme, user("bob", &["other"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = upsert(&server, &acme, user("carol", &["acme"]))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "cannot take over another organisation's user"
    );

    let mut directory = server.directory(&acme);
    let hidden = directory
        .get_user(pb::GetUserRequest {
            login: "carol".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let shared = directory
        .get_user(pb::GetUserRequest {
            login: "shared".into(),
        })
        .await
        .unwrap();
    // Of a shared user, a key sees only its own organisation.
    assert_eq!(shared.into_inner().organisations, ["acme"]);
    let status = directory
        .delete_user(pb::DeleteUserRequest {
            login: "shared".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = directory
        .list_users(pb::ListUsersRequest {
            organisation: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let own = directory
        .list_users(pb::ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let logins: Vec<String> = own.users.into_iter().map(|u| u.login).collect();
    assert_eq!(
        logins,
        ["alice", "shared"],
        "an empty organisation means the key's own"
    );
}
