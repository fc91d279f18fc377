//! A signing key for SNS messages in tests: an RSA key and its self-signed
//! certificate made by openssl (`scripts/ensure-openssl.sh` installs it), and the
//! `Signature` of a string as SNS computes it (SHA1withRSA for `SignatureVersion`
//! 1, SHA256withRSA for 2). The certificate is what a test's fake SNS host serves
//! at `SigningCertURL`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;

/// A key and its certificate, kept in a temporary directory for as long as this
/// lives.
pub struct SnsKeys {
    pub dir: tempfile::TempDir,
    /// The private key (PEM file), for [`sign`].
    pub key: PathBuf,
    /// The self-signed certificate (PEM).
    pub cert_pem: Vec<u8>,
}

impl SnsKeys {
    /// A fresh 2048-bit RSA key with a certificate for `CN=sns.amazonaws.com`.
    pub fn generate() -> SnsKeys {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=sns.amazonaws.com", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (install it: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cert_pem = std::fs::read(&cert).expect("cert");
        SnsKeys { dir, key, cert_pem }
    }
}

/// Base64 RSA signature of `data` with `key` (SHA-1 for `version` "1", else SHA-256).
pub fn sign(key: &Path, version: &str, data: &str) -> String {
    let digest = if version == "1" { "-sha1" } else { "-sha256" };
    let mut child = Command::new("openssl")
        .args(["dgst", digest, "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("signature");
    assert!(out.status.success(), "openssl dgst failed");
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}
