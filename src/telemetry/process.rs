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

/// CPU time of process `pid`, user plus system, over all its threads, in
/// seconds (fields 14 and 15 of `/proc/PID/stat`), if known.
pub fn child_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
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

    /// The kernel counts a process's CPU time in ticks (10 ms, commonly):
    /// this process's, read as another process's, grows within a second of
    /// CPU used.
    #[test]
    fn cpu_time_of_a_process_by_id_grows() {
        let pid = std::process::id();
        let first = child_cpu_seconds(pid).unwrap();
        let limit = process_cpu_seconds().unwrap() + 1.0;
        let mut spin = 0u64;
        while child_cpu_seconds(pid).unwrap() <= first {
            spin = (0..std::hint::black_box(100_000u64))
                .fold(spin, |a, i| a.wrapping_mul(31).wrapping_add(i));
            assert!(process_cpu_seconds().unwrap() < limit, "no tick counted");
        }
        std::hint::black_box(spin);
    }

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
