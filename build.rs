//! Turns on the PostgreSQL tests when GRANTBRIDGE_TEST_POSTGRES_URL is set at build time; without it they are
//! listed by `cargo test` as ignored, with the reason, instead of passing silently.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=GRANTBRIDGE_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("GRANTBRIDGE_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
