//! Who a request acts as: the `Authorization: Basic` user (envd's scheme,
//! the password is empty), the `X-Access-Token` check, and the signed
//! `/files` URLs that stand in for the token.

use axum::http::{HeaderMap, header};
use hearth_proto::connect::{Code, ConnectError, base64_decode};
pub(crate) use hearth_proto::signature::{Operation, SignedUrl};
use hearth_proto::signature::{file_signature, same_bytes};

pub(crate) const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// The user named by `Authorization: Basic base64("<user>:")`, if any.
pub(crate) fn basic_user(headers: &HeaderMap) -> Result<Option<String>, ConnectError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ConnectError::new(
            Code::Unauthenticated,
            "Malformed Authorization header: expected Basic base64(\"<user>:\")",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64_decode(encoded.trim()).ok_or_else(malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let user = decoded
        .split_once(':')
        .map_or(decoded.as_str(), |(user, _)| user);
    Ok((!user.is_empty()).then(|| user.to_owned()))
}

/// Whether `headers` carry `token` in X-Access-Token (compared in constant time).
pub(crate) fn has_token(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(ACCESS_TOKEN_HEADER) else {
        return false;
    };
    same_bytes(given.as_bytes(), token.as_bytes())
}

/// Why a `/files` request without the access token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignedUrlError {
    #[error(
        "Missing access token or signature: send the X-Access-Token header or use a signed URL"
    )]
    Missing,
    #[error("Invalid access token: the X-Access-Token header does not match")]
    WrongToken,
    #[error(
        "Invalid signature: sign the URL for this path, user and operation with the current access token"
    )]
    Invalid,
    #[error("The signature expired at unix time {0}: sign a new URL")]
    Expired(i64),
}

/// Whether a `/files` request may go on once an access token is set: it
/// carries the token in X-Access-Token, or no such header and a signature
/// of `url` for `operation` that has not expired at `now` (unix seconds). A
/// wrong header is refused even beside a good signature, as envd does.
pub(crate) fn check_file_access(
    headers: &HeaderMap,
    token: &str,
    url: &SignedUrl<'_>,
    operation: Operation,
    now: i64,
) -> Result<(), SignedUrlError> {
    if headers.contains_key(ACCESS_TOKEN_HEADER) {
        return if has_token(headers, token) {
            Ok(())
        } else {
            Err(SignedUrlError::WrongToken)
        };
    }
    let given = url.signature.ok_or(SignedUrlError::Missing)?;
    let expected = file_signature(url, operation, token);
    if !same_bytes(given.as_bytes(), expected.as_bytes()) {
        return Err(SignedUrlError::Invalid);
    }
    match url.expiration {
        Some(expiration) if expiration < now => Err(SignedUrlError::Expired(expiration)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_user_from_header() {
        assert_eq!(basic_user(&HeaderMap::new()), Ok(None));
        assert_eq!(
            basic_user(&with_auth("Basic bm9ib2R5Og==")),
            Ok(Some("nobody".into()))
        );
        assert_eq!(
            basic_user(&with_auth("basic cm9vdA==")),
            Ok(Some("root".into()))
        );
        assert_eq!(basic_user(&with_auth("Basic Og==")), Ok(None));
        for bad in ["Bearer abc", "Basic", "Basic ***"] {
            assert_eq!(
                basic_user(&with_auth(bad)).unwrap_err().code,
                Code::Unauthenticated
            );
        }
    }

    #[test]
    fn token_check() {
        let mut h = HeaderMap::new();
        assert!(!has_token(&h, "secret"));
        h.insert(ACCESS_TOKEN_HEADER, HeaderValue::from_static("secret"));
        assert!(has_token(&h, "secret"));
        assert!(!has_token(&h, "secreT"));
        assert!(!has_token(&h, "secret2"));
    }

    fn url<'a>(path: &'a str, user: &'a str, signature: Option<&'a str>) -> SignedUrl<'a> {
        SignedUrl {
            path,
            user,
            signature,
            expiration: None,
        }
    }

    #[test]
    fn signatures_match_the_python_sdk() {
        // e2b.sandbox.signature.get_signature("/home/user/a.txt", "read", "user", "secret")
        assert_eq!(
            file_signature(
                &url("/home/user/a.txt", "user", None),
                Operation::Read,
                "secret"
            ),
            "v1_oO3VOyxXH3pkX/nhqGaqe3v8d+8vNhbGG2sLjuGWsuo"
        );
        // The same for "write", no user, expiring at 1700000000.
        let expiring = SignedUrl {
            expiration: Some(1_700_000_000),
            ..url("/home/user/a.txt", "", None)
        };
        assert_eq!(
            file_signature(&expiring, Operation::Write, "secret"),
            "v1_dXwXe8Z+I6rQsEdqGqhGbWk2wYSZWKq9TN4jJyuhiGU"
        );
    }

    #[test]
    fn file_access_needs_the_token_or_a_live_signature() {
        let none = HeaderMap::new();
        let good = file_signature(&url("/a", "", None), Operation::Read, "secret");
        let check = |headers: &HeaderMap, url: SignedUrl<'_>, operation| {
            check_file_access(headers, "secret", &url, operation, 1_000)
        };
        assert_eq!(
            check(&none, url("/a", "", Some(&good)), Operation::Read),
            Ok(())
        );
        assert_eq!(
            check(&none, url("/a", "", None), Operation::Read),
            Err(SignedUrlError::Missing)
        );
        for (path, user, operation) in [
            ("/b", "", Operation::Read),
            ("/a", "root", Operation::Read),
            ("/a", "", Operation::Write),
        ] {
            assert_eq!(
                check(&none, url(path, user, Some(&good)), operation),
                Err(SignedUrlError::Invalid),
                "{path} {user} {operation:?}"
            );
        }

        let mut token = HeaderMap::new();
        token.insert(ACCESS_TOKEN_HEADER, HeaderValue::from_static("secret"));
        assert_eq!(check(&token, url("/a", "", None), Operation::Write), Ok(()));
        let mut wrong = HeaderMap::new();
        wrong.insert(ACCESS_TOKEN_HEADER, HeaderValue::from_static("guess"));
        assert_eq!(
            check(&wrong, url("/a", "", Some(&good)), Operation::Read),
            Err(SignedUrlError::WrongToken)
        );

        let signed_until = |expiration| {
            let mut url = url("/a", "", None);
            url.expiration = Some(expiration);
            let signature = file_signature(&url, Operation::Read, "secret");
            check(
                &none,
                SignedUrl {
                    signature: Some(&signature),
                    ..url
                },
                Operation::Read,
            )
        };
        assert_eq!(signed_until(1_000), Ok(()));
        assert_eq!(signed_until(999), Err(SignedUrlError::Expired(999)));
    }
}
