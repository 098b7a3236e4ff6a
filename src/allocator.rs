//! How the global allocator (mimalloc, `src/main.rs`) gives memory back.
//!
//! mimalloc 3 keeps memory it has freed for a second before it returns it to the
//! operating system, and where the kernel backs memory with transparent huge pages
//! (`always`, as several distributions ship it) a 2 MiB page stays resident while any of
//! it is in use. Under a steady flow of large messages (a 100 KB attachment makes a
//! 140 KB MIME message, built, signed and sent, and its create event decoded and stored)
//! both kept the service's resident memory far above its heap: in a run of 2,000 such
//! emails, 187 to 227 MiB resident for an 82 MiB heap at its peak (heaptrack). Freeing
//! after 10 ms (mimalloc 2's delay) and no transparent huge pages took that run to 115 to
//! 125 MiB; either alone, to about 155; a delay of 100 ms, to 130. See
//! docs/performance.md.
//!
//! mimalloc's own environment variables still decide where they are set:
//! `MIMALLOC_PURGE_DELAY` (milliseconds) and `MIMALLOC_ALLOW_THP` (1 keeps huge pages).

use std::ffi::c_long;

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h`; libmimalloc-sys 0.1 names only
/// the options of mimalloc 1 and 2.
const PURGE_DELAY: mi_option_t = 15;

/// How long freed memory is kept for reuse before it goes back to the operating system.
const PURGE_DELAY_MS: c_long = 10;

/// Applies the settings above; called first thing in `main`, before the runtime's threads
/// start allocating.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option, which mimalloc reads each time it purges.
        unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // mimalloc reads its own `allow_thp` option only as the process starts, before
        // `main`; the prctl it would make is made here. It takes no pointers and affects
        // this process only; a kernel without transparent huge pages refuses it, which
        // changes nothing.
        // SAFETY: PR_SET_THP_DISABLE with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::mi_option_get;

    use super::*;

    #[test]
    fn tune_shortens_mimallocs_purge_delay_and_turns_off_huge_pages() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ALLOW_THP").is_some()
        {
            eprintln!("MIMALLOC_PURGE_DELAY or MIMALLOC_ALLOW_THP is set: they decide, not tune");
            return;
        }
        // The number is mimalloc 3's purge delay: its default there is 1,000 ms (an
        // upgrade that renumbers the options fails here, not silently).
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, 1000);
        tune();
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, PURGE_DELAY_MS);
        #[cfg(target_os = "linux")]
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1,
            "transparent huge pages are off for the process"
        );
    }
}
