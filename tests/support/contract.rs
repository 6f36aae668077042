//! The contract as its descriptor states it (`mailroom::proto::FILE_DESCRIPTOR_SET`): every
//! RPC of every `mailroom.v1` service, and the fields of each request that name something an
//! organisation owns. The tables of RPCs in the tests (permissions in `auth.rs`, refusals
//! across organisations in `tenancy.rs`) are checked against it, so that a new RPC, or a new
//! field naming an id, a login or an organisation, fails them until it has its row.
//!
//! Also: calling any RPC with an encoded request ([`call`]), and a key the API would never
//! create, planted in the store ([`plant_key`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use mailroom::auth::{ApiKey, Permission};
use mailroom::store::prelude::*;
use prost::bytes::{Buf, BufMut};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use secrecy::ExposeSecret;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};

use super::{Bearer, TestServer};

/// The contract's package.
pub const PACKAGE: &str = "mailroom.v1";

/// The request fields that name something an organisation owns: its resources by id (a
/// message, an API key), a token by its secret, a request by its idempotency key, a user by
/// login, the organisation itself.
pub const NAMING: [&str; 6] = [
    "id",
    "token",
    "idempotency_key",
    "login",
    "organisation",
    "organisations",
];

/// One RPC of the contract.
pub struct Rpc {
    /// `/mailroom.v1.<Service>/<Method>`.
    pub path: String,
    /// Its request.
    pub input: MessageDescriptor,
}

impl Rpc {
    /// The request fields that name something of an organisation ([`NAMING`]); nested ones
    /// dotted (`user.login`).
    pub fn naming_fields(&self) -> Vec<String> {
        naming_fields(&self.input, 0)
    }

    /// Whether the request says which organisation it acts for.
    pub fn names_organisation(&self) -> bool {
        self.input.get_field_by_name("organisation").is_some()
    }
}

/// Every RPC of every service of the contract, from its descriptor.
pub fn rpcs() -> Vec<Rpc> {
    let pool = DescriptorPool::decode(mailroom::proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptor set");
    let mut rpcs = Vec::new();
    for service in pool.services().filter(|s| s.package_name() == PACKAGE) {
        rpcs.extend(service.methods().map(|method| Rpc {
            path: format!("/{}/{}", service.full_name(), method.name()),
            input: method.input(),
        }));
    }
    assert!(rpcs.len() > 1, "the descriptor names the contract's RPCs");
    rpcs
}

fn naming_fields(message: &MessageDescriptor, depth: usize) -> Vec<String> {
    assert!(depth < 8, "{} nests too deep", message.full_name());
    let mut found = Vec::new();
    for field in message.fields() {
        if NAMING.contains(&field.name()) {
            found.push(field.name().to_string());
        }
        // Into the contract's own messages (a `User`), not google.protobuf's.
        if let Kind::Message(inner) = field.kind() {
            if inner.package_name() == PACKAGE && !field.is_map() {
                let nested = naming_fields(&inner, depth + 1);
                found.extend(nested.into_iter().map(|f| format!("{}.{f}", field.name())));
            }
        }
    }
    found
}

/// Fails unless `table` has exactly the entries `contract` requires, naming what is
/// missing (a new RPC or field without its row) and what is extra (a row for nothing).
#[track_caller]
pub fn assert_table_covers<T: Ord + std::fmt::Debug + Clone>(
    what: &str,
    table: impl IntoIterator<Item = T>,
    contract: impl IntoIterator<Item = T>,
) {
    let mut rows = BTreeSet::new();
    for row in table {
        assert!(rows.insert(row.clone()), "{what}: {row:?} twice");
    }
    let contract: BTreeSet<T> = contract.into_iter().collect();
    let missing: Vec<&T> = contract.difference(&rows).collect();
    let extra: Vec<&T> = rows.difference(&contract).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} does not match the contract's descriptor: no row for {missing:?}; \
         rows for nothing in the contract: {extra:?}"
    );
}

/// Calls the RPC at `path` with an encoded request, presenting `key`: the encoded response.
pub async fn call(
    server: &TestServer,
    path: &str,
    key: &str,
    request: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.expect("channel ready");
    let request = Bearer::new(key)
        .call(Request::new(()))
        .unwrap()
        .map(|()| request);
    let path = PathAndQuery::try_from(path).expect("an RPC path");
    grpc.unary(request, path, Bytes)
        .await
        .map(|r| r.into_inner())
}

/// [`call`]'s outcome as a code.
pub async fn call_code(server: &TestServer, path: &str, key: &str, request: Vec<u8>) -> Code {
    match call(server, path, key, request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Whether `status` refuses a key for the organisation it tried to act for (not for a
/// permission it lacks, nor for a login).
pub fn refused_for_organisation(status: &Status) -> bool {
    status.code() == Code::PermissionDenied && status.message().contains("cannot act for")
}

/// Messages as they are on the wire, so that one table can call every RPC.
#[derive(Clone, Copy, Default)]
struct Bytes;

impl Codec for Bytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Bytes;
    type Decoder = Bytes;

    fn encoder(&mut self) -> Bytes {
        Bytes
    }

    fn decoder(&mut self) -> Bytes {
        Bytes
    }
}

impl Encoder for Bytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Bytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut message = vec![0; src.remaining()];
        src.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}

/// Writes into `store` a key of `organisation` holding every permission: one the API never
/// creates (it grants managePlatform to `admin` keys only), as an older store or a bug could
/// hold. With it, a refusal across organisations cannot come from a missing permission.
/// Its secret.
pub async fn plant_key(store: &dyn Store, organisation: &str) -> String {
    let secret = mailroom::crypto::random_secret("mrk_");
    let key = ApiKey {
        id: mailroom::crypto::random_id("key_"),
        name: format!("{organisation}-planted"),
        organisation: organisation.into(),
        permissions: Permission::ALL.to_vec(),
        create_time: SystemTime::now(),
        revoked: false,
        secret_digest: mailroom::crypto::digest(secret.expose_secret()),
    };
    store
        .insert_api_key(&key, false)
        .await
        .expect("plant the key");
    secret.expose_secret().to_string()
}

/// A server on sled in `dir` whose store holds a [`plant_key`] of `organisation`: started
/// once (the bootstrap key), stopped, the key written, and started again. The server and the
/// planted key's secret.
pub async fn start_with_planted_key(dir: &Path, organisation: &str) -> (TestServer, String) {
    let mut first = TestServer::start_in(dir).await;
    first.stop().await.expect("first start");
    drop(first);
    let store = mailroom::store::sled::SledStore::open(dir, 16 << 20).expect("open sled");
    let secret = plant_key(&store, organisation).await;
    store.flush().await.expect("flush");
    drop(store);
    (TestServer::start_in(dir).await, secret)
}
