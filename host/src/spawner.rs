//! The spawner threads every worker and fork-server is started from.
//!
//! Linux delivers the parent-death signal when the *thread* that forked the
//! child exits, so spawning from a caller's short-lived thread would kill the
//! child with it. Children are therefore spawned from long-lived threads (one
//! per core, at most four), started on first use and living as long as the
//! process.

use std::io;
use std::process::{Child, Command};

use crossbeam_channel::Sender;

use crate::event_loop::Started;

type SpawnJob = (Command, Sender<io::Result<Child>>);

/// Most spawner threads.
const MAX_SPAWNERS: usize = 4;

/// The spawner threads: one per core, at most [`MAX_SPAWNERS`], started on
/// first use and never ending (see the module docs). More than one so a batch
/// of loads is not serialised on a single fork/exec at a time.
fn spawner() -> Option<&'static Sender<SpawnJob>> {
    static SPAWNER: Started<Sender<SpawnJob>> = Started::new();
    SPAWNER.get_or_start(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<SpawnJob>();
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_SPAWNERS);
        let mut started = 0;
        for _ in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name("bulkhead-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let child = cmd.spawn();
                        // Close our copy of the worker's socket end before anyone
                        // waits on the host end, so a dead worker reads as EOF.
                        drop(cmd);
                        let _ = reply.send(child);
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        // None started: spawning fails now and is tried again next time.
        (started > 0).then_some(tx)
    })
}

/// Spawns `cmd` on a spawner thread and returns the child.
pub(crate) fn spawn_on_spawner(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    spawner()
        .ok_or_else(|| io::Error::other("cannot start a spawner thread"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread is gone"))?
}
