//! What the operating system tells of this process: peak resident memory
//! and CPU time.

use std::collections::HashMap;

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

/// CPU time of each thread of this process, by thread id, in seconds (the
/// first field of `/proc/self/task/TID/schedstat`: time on a CPU, counted
/// in nanoseconds), if known. A thread that has ended is not listed.
pub fn threads_cpu_seconds() -> Option<HashMap<u32, f64>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut threads = HashMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        threads.insert(tid, ns as f64 / 1e9);
    }
    Some(threads)
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

    /// A thread's own CPU time is found under its id, and a thread that
    /// spins shows more of it than one that waits.
    #[test]
    fn cpu_time_by_thread_tells_a_busy_thread_from_an_idle_one() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let idle = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let idle_tid = rx.recv().unwrap();
        // SAFETY: as above.
        let busy_tid = unsafe { libc::gettid() } as u32;
        let before = threads_cpu_seconds().unwrap();
        let start = thread_cpu_seconds().unwrap();
        let mut spin = 0u64;
        while thread_cpu_seconds().unwrap() < start + 0.05 {
            spin = (0..std::hint::black_box(10_000u64))
                .fold(spin, |a, i| a.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(spin);
        let after = threads_cpu_seconds().unwrap();
        done_tx.send(()).unwrap();
        idle.join().unwrap();
        let used = |tid: u32| after[&tid] - before[&tid];
        assert!(used(busy_tid) >= 0.04, "busy thread: {} s", used(busy_tid));
        assert!(used(idle_tid) < 0.01, "idle thread: {} s", used(idle_tid));
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
