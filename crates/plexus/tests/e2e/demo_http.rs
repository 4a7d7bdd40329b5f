//! `plexus demo http` runs the L7 scenario by itself, exits 0 and prints a report whose
//! figures are checked here.

use plexus_test::free_port;
use plexus_test::mesh::run_cli;

use crate::bin;

/// The number after `key` in `line` (`"v2 41 (10.2%)"`, key `"v2 "` → 41).
fn number_after(line: &str, key: &str) -> f64 {
    let rest = line
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("{key:?} missing in {line:?}"));
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key:?} in {line:?}"))
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
}

#[test]
fn demo_http_runs_end_to_end_and_reports_split_canary_retries() {
    let port = free_port().to_string();
    let (code, out, err) =
        run_cli(bin(), &["demo", "http", "--upstream-port", &port], &[]).unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    // 90/10 over 400 requests: v2 gets 40 ± 20 (over 3 standard deviations), all succeed.
    let split = line(&out, "split: ");
    let (v1, v2) = (number_after(split, "v1 "), number_after(split, "v2 "));
    assert_eq!(v1 + v2, 400.0, "{split}");
    assert!((20.0..=60.0).contains(&v2), "{split}");

    // Every canary request reaches v2.
    let canary = line(&out, "canary: ");
    assert_eq!(number_after(canary, "canary: "), 20.0, "{canary}");
    assert_eq!(number_after(canary, "v2 "), 20.0, "{canary}");

    // The flaky instance failed some requests, yet the client saw 100 % success thanks to
    // retries.
    let flaky = line(&out, "flaky: ");
    assert_eq!(number_after(flaky, "flaky: "), 300.0, "{flaky}");
    assert_eq!(number_after(flaky, "success "), 300.0, "{flaky}");
    assert!(number_after(flaky, "retries ") >= 1.0, "{flaky}");

    // The slow instance: requests that reached it timed out, reported as such.
    let slow = line(&out, "slow: ");
    assert!(number_after(slow, "timed out (504) ") >= 1.0, "{slow}");
    let ejections = number_after(line(&out, "ejections: "), "ejections: ");
    assert!(ejections >= 1.0, "no ejection:\n{out}");
    assert!(out.contains("demo finished"), "{out}");
}

#[test]
fn demo_http_refuses_an_unusable_api_address() {
    let (code, out, err) =
        run_cli(bin(), &["demo", "http", "--http-addr", "nowhere:x"], &[]).unwrap();
    assert_ne!(code, 0, "stdout:\n{out}");
    assert!(
        err.contains("cannot bind the HTTP API on nowhere:x"),
        "stderr:\n{err}"
    );
}
