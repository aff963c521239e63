//! The `wginfer` command.
#![deny(clippy::undocumented_unsafe_blocks)]

mod cli;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    cli::main()
}

/// glibc gives large freed blocks back to the kernel at once (blocks over
/// 128 KiB are mmapped, and the heap top is trimmed), so every run of a
/// model page-faults its activations in again: about 15% of a MiniLM run
/// (seq 128) went to page faults and zeroing. Keep freed memory for reuse
/// instead, as an inference runtime's arena does: blocks up to 64 MiB come
/// from the heap, and up to 256 MiB of free heap is kept. `MALLOC_*`
/// environment variables, when set, win.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |var: &str| std::env::var_os(var).is_some();
        // SAFETY: mallopt only changes allocator parameters; it is called
        // before any other thread exists.
        unsafe {
            if !set("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
            }
            if !set("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            }
        }
    }
}
