//! Compiles the protos with protox (pure Rust: no protoc to install) and tonic-prost-build.
//!
//! - `proto/email.proto`: mailroom's API, server and client, plus its encoded file
//!   descriptor set for server reflection (prost-build only writes one when it runs
//!   protoc itself, so it is written here).
//! - `tests/proto/original_email.proto`: the original service's proto, verbatim, compiled
//!   to a client in `OUT_DIR/original/`; only the integration tests include it, to prove
//!   that clients generated from the original keep working.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const API_PROTOS: &[&str] = &["proto/email.proto"];
const ORIGINAL_PROTOS: &[&str] = &["tests/proto/original_email.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    // sqlx::migrate! embeds migrations/ at compile time; rebuild when it changes.
    println!("cargo:rerun-if-changed=migrations");
    for proto in API_PROTOS.iter().chain(ORIGINAL_PROTOS) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let api = protox::compile(API_PROTOS, ["proto"])?;
    fs::write(out_dir.join("email_descriptor.bin"), api.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(&out_dir)
        .compile_fds(api)?;

    let original_dir = out_dir.join("original");
    fs::create_dir_all(&original_dir)?;
    let original = protox::compile(ORIGINAL_PROTOS, ["tests/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(&original_dir)
        .compile_fds(original)?;
    Ok(())
}
