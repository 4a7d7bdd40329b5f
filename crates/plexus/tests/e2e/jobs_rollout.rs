//! Rolling updates of a job behind sidecars, with a client calling all along: a broken version
//! reverts by itself, a good one replaces every instance; neither fails a call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::jobs::{instances, job, ok, path, server, status, wait_alive};
use crate::write_file;

/// A web app: `<alloc id> v<VERSION>` on every path; with `BROKEN=1`, 500 on every path (its
/// check fails, and a caller routed to it would fail too).
const APP: &str = r#"import http.server, os
port = int(os.environ["PLEXUS_PORT_http"])
body = ("%s v%s" % (os.environ["PLEXUS_ALLOC_ID"], os.environ.get("VERSION", "?"))).encode()
broken = os.environ.get("BROKEN") == "1"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if broken else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn roll_job(app: &str, version: &str, broken: bool) -> String {
    format!(
        r#"job "roll" {{
  group "web" {{
    count = 2
    network {{
      port "http" {{}}
    }}
    service {{
      name = "roll-web"
      port = "http"
      check {{
        type     = "http"
        path     = "/health"
        interval = "300ms"
        timeout  = "250ms"
      }}
      connect {{
        sidecar_service {{}}
      }}
    }}
    task "app" {{
      driver = "exec"
      config {{
        command = "python3"
        args    = ["{app}"]
      }}
      env {{
        VERSION = "{version}"
        BROKEN  = "{broken}"
      }}
    }}
    update {{
      max_parallel     = 1
      min_healthy_time = "1s"
      healthy_deadline = "{deadline}"
      auto_revert      = true
    }}
  }}
  group "client" {{
    network {{
      port "http" {{}}
    }}
    service {{
      name = "roll-client"
      port = "http"
      connect {{
        sidecar_service {{
          proxy {{
            upstreams {{
              destination_name = "roll-web"
            }}
          }}
        }}
      }}
    }}
    task "app" {{
      driver = "exec"
      config {{
        command = "python3"
        args    = ["-m", "http.server", "0", "--bind", "127.0.0.1"]
      }}
    }}
    update {{
      min_healthy_time = "1s"
      healthy_deadline = "20s"
    }}
  }}
}}
"#,
        broken = u8::from(broken),
        // The broken version's deadline is what the test waits for; the good ones get room
        // for a loaded machine.
        deadline = if broken { "6s" } else { "20s" },
    )
}

/// Calls through the client's sidecar until stopped, counting failures and what served.
struct Caller {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Caller {
    fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, c, f, l) = (stop.clone(), calls.clone(), failed.clone(), last.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap();
            while !s.load(Ordering::SeqCst) {
                let answer = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.ok(),
                    Ok(r) => {
                        eprintln!("call failed: {}", r.status());
                        None
                    }
                    Err(e) => {
                        eprintln!("call failed: {e}");
                        None
                    }
                };
                c.fetch_add(1, Ordering::SeqCst);
                match answer {
                    Some(body) => {
                        let mut last = l.lock().unwrap();
                        last.push(body);
                        let n = last.len();
                        if n > 20 {
                            last.drain(..n - 20);
                        }
                    }
                    None => {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // Pacing (about 50 calls a second), not synchronisation.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            calls,
            failed,
            last,
            task,
        }
    }

    /// The last 20 answers.
    fn last(&self) -> Vec<String> {
        self.last.lock().unwrap().clone()
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.calls.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn deployment(s: &serde_json::Value) -> (u64, String) {
    (
        s["deployment"]["version"].as_u64().unwrap_or(0),
        s["deployment"]["state"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_reverts_by_itself_and_a_good_one_rolls_out_without_a_failed_call() {
    let (_data, server) = server().await;
    let (mut agent, _) =
        crate::agent::agent("roll-node", &server.addr(), &["--job-slots", "4"]).await;
    wait_alive(&server, "roll-node").await;
    let intention: plexus_api::connect::Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "roll-client", "DestinationName": "roll-web", "Action": "allow"
    }))
    .unwrap();
    server.client.create_intention(&intention).await.unwrap();
    let (_app_dir, app) = write_file("app.py", APP);
    let app = path(&app).to_owned();
    let run = |text: String| {
        let server = &server;
        async move {
            let (_d, file) = write_file("roll.hcl", &text);
            let f = path(&file).to_owned();
            tokio::task::block_in_place(|| job(server, &["run", &f]))
        }
    };

    let (code, out, err) = run(roll_job(&app, "1", false)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("all 3 instance(s) healthy"), "{out}");

    let s = status(&server, "roll").await;
    let upstream = instances(&s)
        .iter()
        .find(|i| i["allocation"]["group"] == "client")
        .and_then(|i| i["status"]["ports"]["upstream:roll-web"].as_u64())
        .unwrap();
    let caller = Caller::start(format!("http://127.0.0.1:{upstream}/"));
    // Both instances serve through the mesh before the update.
    plexus_test::eventually!({
        let last = caller.last();
        last.iter().any(|b| b == "roll-web-0 v1") && last.iter().any(|b| b == "roll-web-1 v1")
    });

    let pid_of = |s: &serde_json::Value, id: &str| {
        instances(s)
            .iter()
            .find(|i| i["allocation"]["id"] == id)
            .and_then(|i| i["status"]["pid"].as_u64())
    };
    let web1 = pid_of(&status(&server, "roll").await, "roll-web-1").unwrap();

    // A version whose check fails: reverted by itself, the old instances serving meanwhile.
    let (code, out, err) = run(roll_job(&app, "2", true)).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("error: version 2 failed and job \"roll\" reverted by itself to version 1 (now version 3)"),
        "{err}"
    );
    assert!(
        err.contains("group \"web\": 1 instance(s) of version 2 not healthy within healthy_deadline 6s: roll-web-0: checks not passing"),
        "{err}"
    );
    assert!(out.contains("rollout of version 2: running"), "{out}");
    plexus_test::eventually!(
        {
            let s = status(&server, "roll").await;
            deployment(&s) == (3, "successful".to_owned())
                && instances(&s)
                    .iter()
                    .all(|i| i["allocation"]["version"] == 3 && i["status"]["version"] == 3)
        },
        std::time::Duration::from_secs(30)
    );
    let history = ok(&server, &["history", "roll", "--json"]);
    let history: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    let cause = history[0]["cause"].as_str().unwrap();
    assert!(
        cause
            .starts_with("auto-revert to 1: group \"web\": 1 instance(s) of version 2 not healthy"),
        "{cause}"
    );
    assert_eq!(
        history[0]["job"], history[2]["job"],
        "version 3 is version 1's spec"
    );
    let out = ok(&server, &["status", "roll"]);
    assert!(out.contains("rollout of version 3: successful"), "{out}");
    assert!(
        out.contains("before it: rollout of version 2: reverted"),
        "{out}"
    );
    // The untouched instance was never restarted (it moved from version 1 to 3 in place).
    assert_eq!(
        pid_of(&status(&server, "roll").await, "roll-web-1"),
        Some(web1)
    );
    plexus_test::eventually!({
        let last = caller.last();
        last.iter().any(|b| b == "roll-web-0 v1") && last.iter().any(|b| b == "roll-web-1 v1")
    });

    // A good update: every instance ends on the new version.
    let (code, out, err) = run(roll_job(&app, "2", false)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("Job \"roll\" version 4: all 3 instance(s) healthy"),
        "{out}"
    );
    assert!(
        out.contains("rollout of version 4: running, group \"web\" batch 2"),
        "{out}"
    );
    let s = status(&server, "roll").await;
    assert!(
        instances(&s)
            .iter()
            .all(|i| i["allocation"]["version"] == 4 && i["status"]["healthy"] == true),
        "{s}"
    );
    plexus_test::eventually!({
        let last = caller.last();
        last.iter().any(|b| b == "roll-web-0 v2") && last.iter().any(|b| b == "roll-web-1 v2")
    });
    let (calls, failed) = caller.stop().await;
    eprintln!("calls during the rollouts: {calls}, failed: {failed}");
    assert!(calls > 200, "{calls} calls");
    assert_eq!(
        failed, 0,
        "failed calls during the rollouts ({calls} in all)"
    );

    ok(&server, &["stop", "roll"]);
    agent.terminate().await.unwrap();
}

/// Group "web" of job "halt": `count` instances, serving HTTP unless `listen` is false (then its
/// TCP check fails, and its deadline is 4s); no auto_revert.
fn halt_job(count: u32, listen: bool) -> String {
    let deadline = if listen { "20s" } else { "4s" };
    let script = if listen {
        "exec python3 -m http.server $PLEXUS_PORT_http --bind 127.0.0.1"
    } else {
        "exec sleep 60"
    };
    format!(
        r#"job "halt" {{
  group "web" {{
    count = {count}
    network {{
      port "http" {{}}
    }}
    service {{
      name = "halt-web"
      port = "http"
      check {{
        type     = "tcp"
        interval = "300ms"
        timeout  = "250ms"
      }}
    }}
    task "app" {{
      driver = "exec"
      config {{
        command = "sh"
        args    = ["-c", "{script}"]
      }}
    }}
    update {{
      max_parallel     = 1
      min_healthy_time = "500ms"
      healthy_deadline = "{deadline}"
    }}
  }}
}}
"#
    )
}

fn pids(s: &serde_json::Value) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = instances(s)
        .iter()
        .map(|i| {
            (
                i["allocation"]["id"].as_str().unwrap_or("").to_owned(),
                i["allocation"]["version"].as_u64().unwrap_or(0),
                i["status"]["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_scale_restarts_nothing_and_a_broken_version_without_auto_revert_stops_its_rollout() {
    let (_data, server) = server().await;
    let (mut agent, _) =
        crate::agent::agent("halt-node", &server.addr(), &["--job-slots", "4"]).await;
    wait_alive(&server, "halt-node").await;
    let (_d, file) = write_file("halt.hcl", &halt_job(2, true));
    let out = ok(&server, &["run", path(&file)]);
    assert!(
        out.contains("Job \"halt\" version 1: all 2 instance(s) healthy"),
        "{out}"
    );
    let before = pids(&status(&server, "halt").await);

    // A scale changes only the count: the two instances move to version 2 in place.
    let out = ok(&server, &["scale", "halt", "web", "3"]);
    assert!(out.contains("version 2"), "{out}");
    plexus_test::eventually!({
        let s = status(&server, "halt").await;
        deployment(&s) == (2, "successful".to_owned())
    });
    let after = pids(&status(&server, "halt").await);
    assert_eq!(after.len(), 3, "{after:?}");
    for ((id, _, pid), (id2, version, pid2)) in before.iter().zip(&after) {
        assert_eq!(
            (id, pid, *version),
            (id2, pid2, 2),
            "not restarted: {after:?}"
        );
    }

    // A version that never listens, without auto_revert: its first batch misses the deadline,
    // the rollout fails and stops there; the two other instances stay on version 2.
    let (_d, broken) = write_file("halt.hcl", &halt_job(3, false));
    let (code, out, err) = job(&server, &["run", path(&broken)]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("error: the rollout of version 3 failed: group \"web\": 1 instance(s) of version 3 not healthy within healthy_deadline 4s: halt-web-0: checks not passing"),
        "{err}"
    );
    let s = status(&server, "halt").await;
    assert_eq!(deployment(&s), (3, "failed".to_owned()), "{s}");
    let versions: Vec<u64> = pids(&s).iter().map(|(_, v, _)| *v).collect();
    assert_eq!(versions, [3, 2, 2], "{s}");
    let out = ok(&server, &["status", "halt"]);
    assert!(
        out.contains("rollout of version 3: failed, group \"web\" batch 1 healthy 0/3: group"),
        "{out}"
    );
    let history = ok(&server, &["history", "halt", "--json"]);
    let history: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
    assert_eq!(history.len(), 3, "no revert was written");

    ok(&server, &["stop", "halt"]);
    agent.terminate().await.unwrap();
}
