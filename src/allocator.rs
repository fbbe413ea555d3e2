//! Tunes glibc's allocator for this process: one allocation arena.
//!
//! glibc gives each thread that allocates its own arena (up to eight per core), and each
//! arena keeps its own free memory. The exporter makes many small, long-lived allocations
//! (series, histories, tasks) from a few runtime threads, so the extra arenas only add
//! resident memory: at 10,000 dueslag one arena measured 153 MB against 165 MB with the
//! default (see BENCHMARKS.md), with no measurable CPU cost, since small allocations are
//! served from per-thread caches without taking the arena lock.
//!
//! `MALLOC_ARENA_MAX` in the environment still wins: this only applies when it is unset.

/// Applies the tuning; call before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
