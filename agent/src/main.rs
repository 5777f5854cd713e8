//! veil-agent's entry point: container init helpers first, then PID 1.

fn main() {
    // Re-executed copies of this binary set up container processes and never return.
    veil_container::maybe_run_init();
    let runtime = std::sync::Arc::new(veil_agent::guest_runtime::GuestRuntime::default());
    if let Err(error) = veil_agent::run(runtime) {
        eprintln!("veil-agent: {error}");
        if std::process::id() == 1 {
            veil_agent::pid1::power_off();
        }
        std::process::exit(1);
    }
}
