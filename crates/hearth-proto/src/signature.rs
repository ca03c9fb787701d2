//! Signed `/files` URLs: what the e2b SDKs put on a download or upload URL
//! of a secure sandbox, so that whoever holds the URL may use it without
//! the sandbox's access token. The agent checks them; the server's proxy
//! finds by them which sandbox a URL without a sandbox id is for.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};

/// What a signature allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /files`: a download.
    Read,
    /// `POST /files`: an upload.
    Write,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

/// The query parameters of a `/files` URL that its signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedUrl<'a> {
    /// The `path` parameter as sent, "" when absent.
    pub path: &'a str,
    /// The `username` parameter, "" when absent (the default user).
    pub user: &'a str,
    pub signature: Option<&'a str>,
    /// Unix seconds after which the signature is refused.
    pub expiration: Option<i64>,
}

/// The signature of `url` for `operation` under access token `token`:
/// `v1_` and the unpadded standard base64 of SHA-256 over
/// `path:operation:user:token[:expiration]`.
pub fn file_signature(url: &SignedUrl<'_>, operation: Operation, token: &str) -> String {
    let mut signed = format!("{}:{}:{}:{token}", url.path, operation.as_str(), url.user);
    if let Some(expiration) = url.expiration {
        signed.push_str(&format!(":{expiration}"));
    }
    format!(
        "v1_{}",
        STANDARD_NO_PAD.encode(Sha256::digest(signed.as_bytes()))
    )
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_what_the_sdks_compute() {
        // From the Python SDK's get_signature("/home/user/a.txt", "read",
        // None, "tok") and with expiration 1700000000.
        let url = SignedUrl {
            path: "/home/user/a.txt",
            user: "",
            signature: None,
            expiration: None,
        };
        let plain = file_signature(&url, Operation::Read, "tok");
        let expected = format!(
            "v1_{}",
            STANDARD_NO_PAD.encode(Sha256::digest(b"/home/user/a.txt:read::tok"))
        );
        assert_eq!(plain, expected);
        let expiring = SignedUrl {
            expiration: Some(1_700_000_000),
            ..url
        };
        assert_ne!(file_signature(&expiring, Operation::Read, "tok"), plain);
        assert_ne!(file_signature(&url, Operation::Write, "tok"), plain);
        assert_ne!(file_signature(&url, Operation::Read, "other"), plain);
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
    }
}
