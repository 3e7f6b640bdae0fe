//! Background work gives way to the labeler. The trainer, the generator feed and the
//! compute threads they use run at a lower scheduling priority (nice 10) than the
//! thread that draws the screen and saves judgements, so a key is answered at once
//! even while they keep both cores busy; with nothing else to run they get the cores
//! all the same.

/// The niceness background threads take.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority (on Linux niceness belongs to a
/// thread). A failure costs the labeler some latency only: it is logged.
#[allow(unsafe_code)]
pub fn background() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` and `setpriority` on the calling thread's own id read and
        // change no memory of ours.
        let r = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
        };
        if r != 0 {
            tracing::debug!(
                "could not lower a background thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Starts the global compute pool (the trainer's and scorer's products) with its
/// threads at background priority. Call it before anything uses the pool; if the
/// pool runs already it is left as it is.
pub fn background_compute_pool() {
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| background())
        .build_global()
    {
        tracing::debug!("the compute pool runs already: {e}");
    }
}
