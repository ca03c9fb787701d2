//! Random identifiers: sandbox ids (20 characters of `[a-z0-9]`, like
//! E2B's), and the one source of random bytes for tokens and keys.

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const LEN: usize = 20;

pub(crate) fn new_sandbox_id() -> std::io::Result<String> {
    Ok(encode(&random_bytes::<LEN>()?))
}

/// `N` bytes from the kernel's CSPRNG (`getrandom(2)`).
pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut raw = [0u8; N];
    getrandom::fill(&mut raw)?;
    Ok(raw)
}

/// `N` random bytes as `2 * N` lowercase hex characters: access tokens,
/// API keys and other ids that must not be guessed.
pub fn random_hex<const N: usize>() -> std::io::Result<String> {
    Ok(random_bytes::<N>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A random UUID, version 4 (RFC 9562): event, delivery and build ids.
pub fn random_uuid() -> std::io::Result<String> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

fn encode(raw: &[u8]) -> String {
    // 256 is not a multiple of 36, so the first four characters come up
    // slightly more often; 20 characters keep ids unguessable regardless.
    raw.iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_20_lowercase_alphanumerics_and_differ() {
        let a = new_sandbox_id().unwrap();
        let b = new_sandbox_id().unwrap();
        assert_eq!(a.len(), 20);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{a}"
        );
        assert_ne!(a, b);
        assert_eq!(encode(&[0, 25, 26, 35, 36, 255]), "az09ad");
    }

    #[test]
    fn hex_tokens_have_two_characters_a_byte_and_differ() {
        let a = random_hex::<16>().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{a}"
        );
        assert_ne!(a, random_hex::<16>().unwrap());
    }
}
