//! `plexus lock`: leader election among three processes over sessions and KV locks.

use std::time::{Duration, Instant};

use plexus_test::{Process, eventually};

use crate::{bin, dev};

const TTL: Duration = Duration::from_secs(10);
const LOCK_DELAY: Duration = Duration::from_secs(1);

/// True while the process's own log says it holds the lock (acquired, not yet released, lost or
/// exited).
fn leads(process: &Process) -> bool {
    let log = process.output();
    log.contains("lock acquired")
        && !log.contains("lock released")
        && !log.contains("lock lost")
        && !log.contains("lock child exited")
}

fn child_pid(process: &Process) -> u32 {
    let log = process.output();
    let line = log
        .lines()
        .find(|l| l.contains("lock child started"))
        .expect("the leader started its command");
    line.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .expect("the child's pid is logged")
}

/// Asserts at most one live process leads, judged from each one's own log.
fn at_most_one_leader(processes: &[Process], dead: &[usize]) -> usize {
    let leaders: Vec<usize> = (0..processes.len())
        .filter(|i| !dead.contains(i) && leads(&processes[*i]))
        .collect();
    assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
    leaders.len()
}

#[tokio::test]
async fn three_processes_elect_one_leader_and_hand_over_within_ttl_plus_lock_delay() {
    let dev = dev(&[]).await;
    let addr = format!("127.0.0.1:{}", dev.http.port());
    let ttl = format!("{}s", TTL.as_secs());
    let delay = format!("{}s", LOCK_DELAY.as_secs());
    let spawn = |i: usize| {
        let args: Vec<String> = [
            "lock",
            "--http-addr",
            &addr,
            "--ttl",
            &ttl,
            "--lock-delay",
            &delay,
            "service/leader",
            "--",
            "sleep",
            "600",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        Process::spawn(&format!("lock-{i}"), bin(), &args, &[]).unwrap()
    };
    let mut processes = vec![spawn(0), spawn(1), spawn(2)];
    for process in &processes {
        process.wait_for_line("session created").await.unwrap();
    }
    eventually!(at_most_one_leader(&processes, &[]) == 1);
    let first = (0..3).find(|i| leads(&processes[*i])).unwrap();

    // The leader dies with its command (SIGKILL: no release). Its session holds the lock until
    // the TTL runs out; then the lock-delay; then exactly one other takes over. (The leader logs
    // its command's start just after "lock acquired": wait for that line, do not race it.)
    processes[first]
        .wait_for_line("lock child started")
        .await
        .unwrap();
    let command = child_pid(&processes[first]);
    processes[first].signal("KILL").unwrap();
    let killed_at = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &command.to_string()])
        .status();
    let dead = [first];
    let handover = TTL + LOCK_DELAY + Duration::from_secs(3);
    eventually!(at_most_one_leader(&processes, &dead) == 1, handover);
    let took = killed_at.elapsed();
    assert!(
        took >= TTL / 2 - Duration::from_millis(500),
        "the lock moved after {took:?}, before the dead leader's session could expire"
    );
    let second = (0..3)
        .find(|i| !dead.contains(i) && leads(&processes[*i]))
        .unwrap();
    eprintln!("leader {first} killed; {second} took over after {took:?}");

    // A leader that stops cleanly releases at once (no lock-delay): the last one takes over.
    let released_at = Instant::now();
    let status = processes[second].terminate().await.unwrap();
    assert!(processes[second].output().contains("lock released"));
    assert!(
        !status.success(),
        "its command was stopped by SIGTERM: {status:?}"
    );
    let dead = [first, second];
    eventually!(
        at_most_one_leader(&processes, &dead) == 1,
        Duration::from_secs(5)
    );
    assert!(
        released_at.elapsed() < TTL,
        "a clean release hands over at once"
    );
    let third = 3 - first - second;
    assert!(leads(&processes[third]));
    processes[third].terminate().await.unwrap();
}
