//! An application that selects self-worker mode but forgets to call
//! `bulkhead_host::worker_main_if_requested()` in `main`. `build()` must refuse
//! (and the copy it starts to ask for the protocol version must not start
//! copies of its own). Prints `built` or `build failed: <error>`.

use bulkhead_host::Supervisor;

fn main() {
    match Supervisor::builder().self_worker().build() {
        Ok(_) => println!("built"),
        Err(e) => {
            println!("build failed: {e}");
            std::process::exit(3);
        }
    }
}
