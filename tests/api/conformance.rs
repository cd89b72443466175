//! Whole-system checks run by external tools, so that `cargo test` is the entire suite:
//! schemathesis against the live server's own `/openapi.json`, the `/docs` page in headless
//! Chromium, and `deploy/validate` on every deployment file.

use std::path::Path;
use std::process::Command;

fn run(script: &str, env: &[(&str, &str)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(script))
        .current_dir(root)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn schemathesis_finds_no_failure_against_the_openapi_document() {
    run(
        "tests/schemathesis.sh",
        &[("TRACKD_BIN", env!("CARGO_BIN_EXE_trackd"))],
    );
}

#[test]
fn the_docs_page_issues_a_number_in_a_real_browser() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).unwrap();
    run(
        "tests/browser.sh",
        &[
            ("TRACKD_BIN", env!("CARGO_BIN_EXE_trackd")),
            ("OUT_DIR", out.to_str().unwrap()),
        ],
    );
    assert!(out.join("docs.png").is_file(), "no screenshot");
}

#[test]
fn deployment_files_pass_their_validators() {
    run("deploy/validate", &[]);
}
