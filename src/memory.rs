//! The process's memory: allocator settings, giving freed memory back to the
//! kernel, and resident size from /proc.
//!
//! Matchday runs on glibc's allocator. Two of its habits cost a replica
//! memory it no longer uses: a dynamic mmap threshold that keeps large
//! freed buffers in per-thread arenas ([`tune_allocator`]), and free chunks
//! in the middle of an arena that stay resident until `malloc_trim` walks
//! them ([`release_free_memory`]).

/// Pins glibc's mmap threshold at 1 MiB. Left to itself glibc raises the
/// threshold to the size of the largest block freed so far, so after the
/// first password hash each 19 MiB argon2id buffer comes from a per-thread
/// arena and stays resident when freed: 300 registrations left a replica
/// at 1.19 GB RSS, against 23 MB with the threshold pinned
/// (RELIABILITY.md). Pinning it also turns off that adjustment; blocks past 1 MiB
/// go back to the kernel when freed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under the
    // allocator's own lock; it is called first thing, before any hash.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// Hands the free pages inside glibc's arenas back to the kernel and returns
/// whether any went. glibc returns only the top of an arena on `free`; what
/// hundreds of closed sockets freed in the middle of one stays resident
/// (the abuse test saw 29–60 MiB of it after every hostile socket had
/// closed, 2 MiB after a trim). It walks every arena under that arena's
/// lock, so call it off the async workers and only after a real drop in
/// load. Elsewhere than glibc it does nothing.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes each arena's lock itself; it frees nothing
    // that is in use.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Sum of VmRSS (KiB) over `pids`; `None` if there are none or one is unreadable.
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            vm_rss_kib(&status)
        })
        .sum()
}

/// The `VmRSS:` figure (KiB) of a /proc status file.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_size_is_read_from_a_status_file() {
        let status = "Name:\tmatchday\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kib(status), Some(12345));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
        assert_eq!(rss_kib(&[]), None);
        assert!(rss_kib(&[std::process::id()]).is_some_and(|kib| kib > 0));
    }
}
