//! Certificates change under traffic: leaves renewed every minute or so for five minutes, and a
//! root rotation, without a single failed connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use plexus_test::eventually;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::http;
use crate::identity::{Mesh, try_round_trip};

/// New connections through the mesh, one after another, until stopped; counts both outcomes.
pub(crate) struct Traffic {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub(crate) fn start(upstream: SocketAddr) -> Self {
        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let task = tokio::spawn({
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let line = format!("line {n}");
                    if try_round_trip(upstream, &line).await.as_deref() == Some(line.as_str()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    // Pacing, not synchronisation: a steady trickle of new connections.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            ok,
            failed,
            stop,
            task,
        }
    }

    pub(crate) fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    pub(crate) fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A connection kept open through everything; proves certificate swaps never touch it.
pub(crate) struct LongLived {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl LongLived {
    pub(crate) async fn open(upstream: SocketAddr) -> Self {
        let (read, write) = TcpStream::connect(upstream).await.unwrap().into_split();
        let mut this = Self {
            read: BufReader::new(read),
            write,
        };
        this.echo("opened").await;
        this
    }

    pub(crate) async fn echo(&mut self, text: &str) {
        self.write
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.read.read_line(&mut line))
            .await
            .expect("long-lived connection answers")
            .unwrap();
        assert_eq!(line.trim_end(), text);
    }
}

const RENEWALS: &str = "plexus_proxy_leaf_renewals_total";

#[tokio::test]
async fn two_minute_leaves_renew_under_five_minutes_of_traffic_without_a_failed_connection() {
    let mesh = Mesh::start(&["--connect-leaf-ttl", "2m"], &[]).await;
    let mut long_lived = LongLived::open(mesh.upstream).await;
    let traffic = Traffic::start(mesh.upstream);
    let scenario = Duration::from_secs(5 * 60);
    let started = Instant::now();
    while started.elapsed() < scenario {
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(
            traffic.failed(),
            0,
            "a connection failed after {:?}",
            started.elapsed()
        );
        long_lived.echo("still open").await;
    }
    let (ok, failed) = traffic.finish().await;
    assert_eq!(failed, 0);
    assert!(ok > 1000, "only {ok} connections");
    for sidecar in [&mesh.client, &mesh.echo_sidecar] {
        let renewals = sidecar.metric(RENEWALS).await.unwrap();
        println!("{ok} connections, 0 failed; {renewals} renewals");
        assert!(renewals >= 2.0, "{renewals} renewals");
        assert!(sidecar.process.output().contains("renewal=true"));
    }
    long_lived.echo("the end").await;
}

#[tokio::test]
async fn root_rotation_under_traffic_without_a_failed_connection() {
    let mesh = Mesh::start(&[], &[]).await;
    let base = format!("http://{}", mesh.dev.addr());
    let mut long_lived = LongLived::open(mesh.upstream).await;
    let traffic = Traffic::start(mesh.upstream);
    eventually!(traffic.ok() >= 10);
    let (_, before, _) = http("GET", &format!("{base}/v1/connect/ca/roots"), None).await;
    let old_root = before["ActiveRootID"].as_str().unwrap().to_owned();

    let (code, out, err) = mesh.dev.cli(&["connect", "ca", "rotate"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let new_root = out
        .lines()
        .find_map(|l| l.strip_prefix("Rotated: new active root "))
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(new_root, old_root);

    // Both roots trusted; the new one carries its cross-signed certificate.
    let (_, roots, _) = http("GET", &format!("{base}/v1/connect/ca/roots"), None).await;
    assert_eq!(roots["ActiveRootID"], new_root.as_str());
    let listed = roots["Roots"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let active = listed.iter().find(|r| r["Active"] == true).unwrap();
    assert_eq!(active["IntermediateCerts"].as_array().unwrap().len(), 1);
    assert!(
        listed
            .iter()
            .any(|r| r["ID"] == old_root.as_str() && r["Active"] == false)
    );

    // Every sidecar re-issues its leaf from the new root.
    for sidecar in [&mesh.client, &mesh.echo_sidecar] {
        sidecar
            .process
            .wait_for_line(&format!("root_id={new_root} "))
            .await
            .unwrap();
        eventually!(sidecar.metric(RENEWALS).await.unwrap() >= 1.0);
        eventually!(sidecar.metric("plexus_proxy_roots_trusted").await.unwrap() == 2.0);
    }
    // Traffic keeps flowing on new leaves.
    let after_rotation = traffic.ok();
    eventually!(traffic.ok() >= after_rotation + 20);
    long_lived.echo("across the rotation").await;
    let (ok, failed) = traffic.finish().await;
    println!("rotation: {ok} connections, {failed} failed");
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    assert_eq!(
        try_round_trip(mesh.upstream, "after").await.as_deref(),
        Some("after")
    );
}
