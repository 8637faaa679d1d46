//! The copy of large plugin-allocated output into the shared response area.
//!
//! A PluginAllocated plugin returns output from its own heap; on the
//! shared-memory transport the worker copies it into the response area, where
//! the host reads it. Past the size the last-level cache can hold next to the
//! plugin's own buffer, ordinary stores first read every destination line
//! (read-for-ownership) and evict lines still in use; stores that bypass the
//! cache do neither. Below it, ordinary stores win: the host then finds the
//! reply in the cache.

/// Smallest output copied with cache-bypassing stores. Measured on a 2-core
/// EPYC guest (32 MiB L3): from about 10 MiB, a bypassing copy plus the
/// host's full read of the reply beat an ordinary copy plus that read; at
/// 8 MiB the ordinary copy still wins. (The C library's own threshold comes
/// from the cache size CPUID reports, which a guest may inflate: 320 MiB here.)
pub(super) const STREAMING_MIN: usize = 12 << 20;

/// Whether `len` bytes at `src` go into `area` (pointer, length) through
/// [`streaming`]: large enough, fitting the area, and not overlapping it.
pub(super) fn worth_streaming(src: *const u8, len: usize, area: (*mut u8, usize)) -> bool {
    if !cfg!(target_arch = "x86_64") || len < STREAMING_MIN || len > area.1 {
        return false;
    }
    let (s, a) = (src as usize, area.0 as usize);
    match (s.checked_add(len), a.checked_add(area.1)) {
        (Some(s_end), Some(a_end)) => s_end <= a || a_end <= s,
        // A range that wraps around the address space is not copied from here.
        _ => false,
    }
}

/// Copies `len` bytes from `src` to `dst` with stores that bypass the cache,
/// then fences them, so they are visible before anything published after.
/// Uses 32-byte stores where the CPU has AVX, else SSE2's 16-byte ones.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the
/// two ranges must not overlap.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn streaming(src: *const u8, dst: *mut u8, len: usize) {
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above); the caller's contract.
        unsafe { streaming_avx(src, dst, len) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { streaming_sse2(src, dst, len) }
    }
}

/// [`streaming`] with 16-byte stores (SSE2: every x86_64 CPU).
///
/// # Safety
/// As [`streaming`].
#[cfg(target_arch = "x86_64")]
unsafe fn streaming_sse2(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    // Ordinary copy up to the first 16-byte aligned destination byte.
    let head = dst.align_offset(16).min(len);
    // SAFETY: the first `head <= len` bytes of both ranges (caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while len - i >= 64 {
        // SAFETY: bytes i..i + 64 lie inside both ranges; `dst + i` is 16-byte
        // aligned (head aligned it, steps are multiples of 16); loads are unaligned.
        unsafe {
            let (s, d) = (src.add(i).cast::<__m128i>(), dst.add(i).cast::<__m128i>());
            let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
            let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
        i += 64;
    }
    // SAFETY: the last `len - i` bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
    // SAFETY: a store fence has no memory operands; SSE2 is baseline on x86_64.
    unsafe { _mm_sfence() };
}

/// [`streaming`] with 32-byte stores.
///
/// # Safety
/// As [`streaming`], and the CPU must support AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn streaming_avx(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};
    // Ordinary copy up to the first 32-byte aligned destination byte.
    let head = dst.align_offset(32).min(len);
    // SAFETY: the first `head <= len` bytes of both ranges (caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut i = head;
    while len - i >= 128 {
        // SAFETY: bytes i..i + 128 lie inside both ranges; `dst + i` is 32-byte
        // aligned (head aligned it, steps are multiples of 32); loads are unaligned.
        unsafe {
            let (s, d) = (src.add(i).cast::<__m256i>(), dst.add(i).cast::<__m256i>());
            let (a, b) = (_mm256_loadu_si256(s), _mm256_loadu_si256(s.add(1)));
            let (c, e) = (_mm256_loadu_si256(s.add(2)), _mm256_loadu_si256(s.add(3)));
            _mm256_stream_si256(d, a);
            _mm256_stream_si256(d.add(1), b);
            _mm256_stream_si256(d.add(2), c);
            _mm256_stream_si256(d.add(3), e);
        }
        i += 128;
    }
    // SAFETY: the last `len - i` bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
    // SAFETY: a store fence has no memory operands. (Newer compilers call
    // this intrinsic safe inside an AVX function; older ones do not.)
    #[allow(unused_unsafe)]
    unsafe {
        _mm_sfence()
    };
}

/// Copies `len` bytes from `src` to `dst` (other architectures: never chosen,
/// see [`worth_streaming`]).
///
/// # Safety
/// As on x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn streaming(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_copies_every_byte_at_any_alignment() {
        let src: Vec<u8> = (0..4096 + 300).map(|i| (i * 31 % 251) as u8).collect();
        for (s_off, d_off, len) in [(0, 0, 4096), (3, 5, 4000), (1, 0, 63), (7, 9, 0), (16, 15, 4096 + 200)] {
            let mut dst = vec![0xAAu8; 4096 + 300];
            // SAFETY: both ranges lie inside their own vectors.
            unsafe { streaming(src.as_ptr().add(s_off), dst.as_mut_ptr().add(d_off), len) };
            assert_eq!(&dst[d_off..d_off + len], &src[s_off..s_off + len]);
            assert!(dst[..d_off].iter().chain(&dst[d_off + len..]).all(|&b| b == 0xAA));
            #[cfg(target_arch = "x86_64")]
            {
                let mut dst = vec![0xAAu8; 4096 + 300];
                // SAFETY: as above; SSE2 is baseline on x86_64.
                unsafe { streaming_sse2(src.as_ptr().add(s_off), dst.as_mut_ptr().add(d_off), len) };
                assert_eq!(&dst[d_off..d_off + len], &src[s_off..s_off + len]);
                assert!(dst[..d_off].iter().chain(&dst[d_off + len..]).all(|&b| b == 0xAA));
            }
        }
    }

    #[test]
    fn only_large_separate_output_that_fits_is_streamed() {
        let min = STREAMING_MIN;
        let mut area = vec![0u8; min + 64];
        let lent = (area.as_mut_ptr(), area.len());
        let other = vec![0u8; min + 128];
        let expect_large = cfg!(target_arch = "x86_64");
        assert_eq!(worth_streaming(other.as_ptr(), min, lent), expect_large);
        assert!(!worth_streaming(other.as_ptr(), min - 1, lent));
        assert!(!worth_streaming(other.as_ptr(), min + 65, lent));
        // Output inside, or straddling, the area is left alone.
        assert!(!worth_streaming(area.as_ptr(), min, lent));
        assert!(!worth_streaming(area.as_ptr().wrapping_add(63), min, lent));
        assert!(!worth_streaming(area.as_ptr().wrapping_sub(1), min, lent));
        // Nor is output whose end would wrap around the address space.
        assert!(!worth_streaming(usize::MAX as *const u8, min, lent));
    }
}
