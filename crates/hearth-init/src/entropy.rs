//! Fresh randomness for a restored guest. Every sandbox restored from one
//! snapshot starts with the same kernel random state; `/init` hands each a
//! seed of its own, credited to the input pool, and reseeds the CRNG at once
//! so the next read of `/dev/urandom` already differs between clones.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('R', 0x03, int[2])`: add bytes to the input pool and credit them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// The most seed bytes accepted in one call.
pub(crate) const MAX_SEED: usize = 512;

/// `struct rand_pool_info` with its buffer inline.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_SEED],
}

/// Mixes `seed` (host randomness) into the kernel pool, credits it in full
/// and reseeds the CRNG. Needs CAP_SYS_ADMIN.
pub(crate) fn reseed(seed: &[u8]) -> io::Result<()> {
    if seed.is_empty() || seed.len() > MAX_SEED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a seed has 1 to {MAX_SEED} bytes, not {}", seed.len()),
        ));
    }
    let mut info = PoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; MAX_SEED],
    };
    info.buf[..seed.len()].copy_from_slice(seed);
    // Both fit: seed.len() <= MAX_SEED = 512.
    info.buf_size = libc::c_int::try_from(seed.len()).unwrap_or(0);
    info.entropy_count = libc::c_int::try_from(seed.len() * 8).unwrap_or(0);
    let random = File::open("/dev/urandom")?;
    // SAFETY: `info` is a live, properly laid out rand_pool_info whose
    // buf_size does not exceed its buffer; the kernel only reads it.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &raw const info) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_size_is_checked_before_any_ioctl() {
        assert_eq!(reseed(&[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            reseed(&[0; MAX_SEED + 1]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
