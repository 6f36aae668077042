//! Compiles the contract in `proto/` with protox (no system `protoc`) and writes the
//! encoded descriptor set to `OUT_DIR` for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mailroom/v1/api_keys.proto",
        "proto/mailroom/v1/directory.proto",
        "proto/mailroom/v1/notifier.proto",
        "proto/mailroom/v1/smtp.proto",
        "proto/mailroom/v1/token.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("mailroom_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
