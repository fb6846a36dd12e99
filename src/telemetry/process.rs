//! What the operating system tells of this process: peak resident memory
//! and CPU time.

/// The peak resident memory of this process in bytes (Linux: `VmHWM` of
/// `/proc/self/status`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of this process, user plus system, over all its threads (those
/// that have ended too), in seconds (`getrusage(RUSAGE_SELF)`), if known.
pub fn process_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: on success getrusage has written the whole struct.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// CPU time of the calling thread, user plus system, in seconds
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`), if known.
pub fn thread_cpu_seconds() -> Option<f64> {
    let mut time = std::mem::MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: on success clock_gettime has written the whole struct.
    let time = unsafe {
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, time.as_mut_ptr()) != 0 {
            return None;
        }
        time.assume_init()
    };
    Some(time.tv_sec as f64 + time.tv_nsec as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_known_and_grows() {
        let (process, thread) = (process_cpu_seconds(), thread_cpu_seconds());
        let spin = (0..std::hint::black_box(2_000_000u64))
            .fold(0u64, |a, i| a.wrapping_mul(31).wrapping_add(i));
        std::hint::black_box(spin);
        assert!(process_cpu_seconds().unwrap() >= process.unwrap());
        assert!(thread_cpu_seconds().unwrap() > thread.unwrap());
    }
}
