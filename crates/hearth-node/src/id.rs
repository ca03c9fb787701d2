//! Sandbox ids: 20 random characters of `[a-z0-9]`, like E2B's.

use std::io::Read;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const LEN: usize = 20;

pub(crate) fn new_sandbox_id() -> std::io::Result<String> {
    Ok(encode(&random_bytes::<LEN>()?))
}

/// `N` bytes from the kernel's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut raw = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    Ok(raw)
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
}
