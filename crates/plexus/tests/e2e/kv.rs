//! The KV store through the real binary: the CLI (get, put, @file, cas, list, delete, export,
//! import, watch), py-consul's KV calls, and bad input over raw HTTP.

use std::io::Write;
use std::path::PathBuf;

use plexus_test::{Server, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bin;

async fn embedded_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let server = Server::start(bin(), "kv-1", &["--store", "embedded", "--data-dir", &data])
        .await
        .unwrap();
    (server, dir)
}

fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let token = Server::token_env()[0];
    plexus_test::mesh::run_cli(bin(), args, &[("PLEXUS_HTTP_ADDR", &server.addr()), token]).unwrap()
}

#[tokio::test]
async fn kv_cli_round_trip_with_file_cas_export_and_import() {
    let (server, dir) = embedded_server().await;
    let (code, out, err) = cli(&server, &["kv", "put", "app/greeting", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Success! Data written to: app/greeting"),
        "{out}"
    );
    let file = dir.path().join("blob.bin");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(b"from a file\n\x01")
        .unwrap();
    let at_file = format!("@{}", file.display());
    assert_eq!(cli(&server, &["kv", "put", "app/blob", &at_file]).0, 0);
    let (code, out, _) = cli(&server, &["kv", "get", "app/greeting"]);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (_, out, _) = cli(&server, &["kv", "get", "app/blob", "--json"]);
    let pair: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pair["Value"], "ZnJvbSBhIGZpbGUKAQ==");
    let modify = pair["ModifyIndex"].as_u64().unwrap();

    // cas: stale fails (exit 1, value unchanged), current succeeds, 0 is create-only.
    let stale = (modify + 1000).to_string();
    let (code, _, err) = cli(&server, &["kv", "put", "app/blob", "x", "--cas", &stale]);
    assert_eq!(code, 1);
    assert!(err.contains("not written"), "{err}");
    assert_eq!(
        cli(&server, &["kv", "put", "app/new", "n", "--cas", "0"]).0,
        0
    );
    assert_eq!(
        cli(&server, &["kv", "put", "app/new", "m", "--cas", "0"]).0,
        1
    );
    assert_eq!(cli(&server, &["kv", "get", "app/new"]).1, "n\n");

    let (_, out, _) = cli(&server, &["kv", "list", "app/"]);
    assert_eq!(out, "app/blob\napp/greeting\napp/new\n");
    let (_, out, _) = cli(&server, &["kv", "list", "", "--separator", "/"]);
    assert_eq!(out, "app/\n");

    // Export, wipe, import: everything is back, byte for byte.
    let (code, export, _) = cli(&server, &["kv", "export", "app/"]);
    assert_eq!(code, 0);
    let export_file = dir.path().join("export.json");
    std::fs::write(&export_file, &export).unwrap();
    assert_eq!(cli(&server, &["kv", "delete", "app/", "--recurse"]).0, 0);
    let (code, _, err) = cli(&server, &["kv", "get", "app/greeting"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, out, err) = cli(&server, &["kv", "import", export_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Imported 3 key(s)"), "{out}");
    let (_, again, _) = cli(&server, &["kv", "export", "app/"]);
    assert_eq!(again, export);

    // A broken import writes nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"key":"ok","value":"aGk="},{"key":"a..b","value":"aGk="}]"#,
    )
    .unwrap();
    let (code, _, err) = cli(&server, &["kv", "import", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("entry 1") && err.contains(".."), "{err}");
    assert_eq!(cli(&server, &["kv", "get", "ok"]).0, 1);
}

#[tokio::test]
async fn kv_watch_prints_each_change() {
    let (server, _dir) = embedded_server().await;
    cli(&server, &["kv", "put", "w", "one"]);
    let watcher = plexus_test::Process::spawn(
        "kv-watch",
        bin(),
        &["kv", "watch", "w", "--http-addr", &server.addr()].map(str::to_owned),
        &Server::token_env(),
    )
    .unwrap();
    watcher.wait_for_line("one").await.unwrap();
    cli(&server, &["kv", "put", "w", "two"]);
    watcher.wait_for_line("two").await.unwrap();
}

/// Sends one raw HTTP/1.1 request (paths exactly as written, no client-side normalisation) and
/// returns (status, body).
async fn raw(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Consul-Token: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        plexus_test::management_token(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn kv_bad_input_is_refused_with_the_cause_and_nothing_stored_is_lost() {
    let (server, _dir) = embedded_server().await;
    let addr = server.addr();
    assert_eq!(raw(&addr, "PUT", "/v1/kv/keep", b"safe").await.0, 200);
    let long = format!("/v1/kv/{}", "k".repeat(600));
    for (path, cause) in [
        ("/v1/kv/a/../b", "key contains"),
        ("/v1/kv/a..b", "key contains"),
        ("/v1/kv/a%00b", "NUL"),
        (long.as_str(), "600 bytes"),
        ("/v1/kv/x?flags=-3", "flags"),
    ] {
        let (status, body) = raw(&addr, "PUT", path, b"v").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(cause), "{path}: {body}");
    }
    let big = vec![b'v'; 512 * 1024 + 1];
    let (status, body) = raw(&addr, "PUT", "/v1/kv/big", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("524288"), "{body}");
    // Stale CAS: false, value unchanged.
    let (status, body) = raw(&addr, "PUT", "/v1/kv/keep?cas=999999", b"lost").await;
    assert_eq!((status, body.trim()), (200, "false"));
    // Still up, nothing lost.
    let (status, body) = raw(&addr, "GET", "/v1/kv/keep?raw", b"").await;
    assert_eq!((status, body.as_str()), (200, "safe"));
    let (status, _) = raw(&addr, "GET", "/v1/kv/big", b"").await;
    assert_eq!(status, 404);
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PLEXUS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python")
}

const PY_KV: &str = r#"
import sys, consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]), token=sys.argv[3])
assert c.kv.put("py/a", "1", flags=5) is True
index, item = c.kv.get("py/a")
assert item["Value"] == b"1" and item["Flags"] == 5, item
assert c.kv.put("py/a", "2", cas=item["ModifyIndex"] + 100) is False
assert c.kv.put("py/a", "2", cas=item["ModifyIndex"]) is True
assert c.kv.put("py/b", "x", cas=0) is True
index, items = c.kv.get("py/", recurse=True)
assert [i["Key"] for i in items] == ["py/a", "py/b"], items
index, keys = c.kv.get("py/", keys=True)
assert keys == ["py/a", "py/b"], keys
index, none = c.kv.get("py/missing")
assert none is None and int(index) > 0, (index, none)
assert c.kv.delete("py/", recurse=True) is True
index, none = c.kv.get("py/a")
assert none is None
print("py-consul KV OK")
"#;

#[tokio::test]
async fn py_consul_kv_calls_work() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let (server, _dir) = embedded_server().await;
    let out = tokio::process::Command::new(&python)
        .args([
            "-c",
            PY_KV,
            "127.0.0.1",
            &server.http.port().to_string(),
            plexus_test::management_token(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("py-consul KV OK"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually!(
        server
            .client
            .kv_keys("", None)
            .await
            .is_ok_and(|k| k.is_empty())
    );
}
