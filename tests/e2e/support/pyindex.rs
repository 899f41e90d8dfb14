//! A PEP 503 "simple" package index on loopback, serving one pure-Python
//! wheel the test builds itself (a wheel is a zip: the module,
//! `*.dist-info/METADATA`, `WHEEL` and `RECORD`), so installs need no
//! internet. The wheel is zipped by `python3` (tests that install Python
//! packages need Python anyway).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::http::{Response, Routes, Server};

/// The distribution name the index serves.
pub const PACKAGE: &str = "dadd-probe";
/// The module the wheel holds.
pub const MODULE: &str = "dadd_probe";
/// What `dadd_probe.MESSAGE` says once imported.
pub const MESSAGE: &str = "dadd-probe imported from the test index";
/// The wheel's file name.
pub const WHEEL: &str = "dadd_probe-1.0-py3-none-any.whl";

const BUILD_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
out, message = sys.argv[1], sys.argv[2]
files = {
    "dadd_probe/__init__.py": "MESSAGE = %r\n" % message,
    "dadd_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: dadd-probe\nVersion: 1.0\nSummary: a test package\n",
    "dadd_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: dadd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
record.append("dadd_probe-1.0.dist-info/RECORD,,")
files["dadd_probe-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name, text in files.items():
        z.writestr(name, text)
"#;

/// Builds the test wheel in `dir`; returns its bytes.
pub fn build_wheel(dir: &Path) -> Vec<u8> {
    let out = dir.join(WHEEL);
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(BUILD_WHEEL)
        .arg(&out)
        .arg(MESSAGE)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "python3 could not build the test wheel");
    std::fs::read(&out).expect("the wheel was written")
}

/// A simple index serving the test wheel; its URL is `server.url("/simple/")`.
pub fn serve(dir: &Path) -> Server {
    let wheel = build_wheel(dir);
    let sum = hex::encode(Sha256::digest(&wheel));
    let project = format!(
        "<!DOCTYPE html><html><body><a href=\"/packages/{WHEEL}#sha256={sum}\">{WHEEL}</a></body></html>"
    );
    let root = format!(
        "<!DOCTYPE html><html><body><a href=\"/simple/{PACKAGE}/\">{PACKAGE}</a></body></html>"
    );
    Routes::new()
        .respond("/simple/", Response::html(root))
        .respond(
            &format!("/simple/{PACKAGE}/"),
            Response::html(project.clone()),
        )
        .respond(&format!("/simple/{PACKAGE}"), Response::html(project))
        .file(&format!("/packages/{WHEEL}"), wheel)
        .serve()
}
