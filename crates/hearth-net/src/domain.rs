//! Domain names in an egress policy: `example.com` (that name only) or
//! `*.example.com` (every name under it, not the name itself).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A host name a sandbox may reach over HTTP (port 80, by its `Host`
/// header) and TLS (port 443, by its server name), stored lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainRule {
    /// The name without a leading `*.`.
    name: String,
    wildcard: bool,
}

/// Why a string is not a [`DomainRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a domain name (like example.com or *.example.com): {why}")]
pub struct DomainError {
    given: String,
    why: &'static str,
}

impl DomainRule {
    /// Whether `host` (a `Host` header without its port, or a TLS server
    /// name) is one this rule allows. A trailing dot and case are ignored.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if self.wildcard {
            host.strip_suffix(&self.name)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        } else {
            host == self.name
        }
    }
}

impl FromStr for DomainRule {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |why| DomainError {
            given: s.to_owned(),
            why,
        };
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.contains('*') {
            return Err(error("a wildcard is allowed only as the first label, `*.`"));
        }
        if name.is_empty() || name.len() > 253 {
            return Err(error("a name has 1 to 253 characters"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return Err(error("each label has 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(error(
                    "labels are letters, digits and hyphens (give other names in punycode)",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(error("a label neither starts nor ends with a hyphen"));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(error(
                "the last label is not all digits (an address is not a name)",
            ));
        }
        Ok(Self { name, wildcard })
    }
}

impl fmt::Display for DomainRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

impl Serialize for DomainRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> DomainRule {
        s.parse().unwrap()
    }

    #[test]
    fn names_match_exactly_and_wildcards_match_below() {
        let exact = rule("Api.Example.com.");
        assert_eq!(exact.to_string(), "api.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.example.COM."));
        assert!(!exact.matches("example.com"));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("api.example.com.evil.net"));
        let wild = rule("*.example.com");
        assert_eq!(wild.to_string(), "*.example.com");
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(!wild.matches(".example.com"));
        assert!(!wild.matches("example.com.evil.net"));
    }

    #[test]
    fn bad_names_say_why() {
        for (bad, why) in [
            ("", "1 to 253"),
            ("*.", "1 to 253"),
            ("a..b", "1 to 63"),
            ("a.*.b", "first label"),
            ("**.b", "first label"),
            ("-a.com", "hyphen"),
            ("a_b.com", "letters, digits"),
            ("bücher.de", "punycode"),
            ("10.0.0.300", "all digits"),
            ("1.2.3.4", "all digits"),
        ] {
            let err = bad.parse::<DomainRule>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(
            format!("{}.com", "a".repeat(64))
                .parse::<DomainRule>()
                .is_err()
        );
        assert_eq!(rule("xn--bcher-kva.de").to_string(), "xn--bcher-kva.de");
    }

    #[test]
    fn rules_round_trip_as_json() {
        let rules = vec![rule("example.com"), rule("*.example.org")];
        let json = serde_json::to_string(&rules).unwrap();
        assert_eq!(json, r#"["example.com","*.example.org"]"#);
        assert_eq!(
            serde_json::from_str::<Vec<DomainRule>>(&json).unwrap(),
            rules
        );
        assert!(serde_json::from_str::<Vec<DomainRule>>(r#"["a b"]"#).is_err());
    }
}
