//! Bakes the location of libsodium-sys-stable's build (its `links`
//! metadata: DEP_SODIUM_INCLUDE and DEP_SODIUM_LIB) into this crate, for
//! `Build::build` to hand to zeromq-src when zmq-sys's build script runs.

fn main() {
    for key in ["DEP_SODIUM_INCLUDE", "DEP_SODIUM_LIB"] {
        println!("cargo:rerun-if-env-changed={key}");
        let value = std::env::var(key).unwrap_or_else(|_| {
            panic!("{key} not set: libsodium-sys-stable did not say where it built libsodium")
        });
        println!("cargo:rustc-env=ZBRIDGE_{key}={value}");
    }
}
