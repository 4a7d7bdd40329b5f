//! Tests; `unwrap` is fine here (the workspace has no clippy.toml `allow-unwrap-in-tests` yet).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::*;
use crate::validate::Defaults;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/definition/testdata")
        .join(name)
}

fn defaults() -> Defaults {
    Defaults {
        datacenter: "dc1".to_owned(),
        node: "node-1".to_owned(),
    }
}

fn parse(file: &str, text: &str) -> Result<Vec<ServiceRegistration>, Vec<DefinitionError>> {
    parse_str(Path::new(file), text)
}

/// The one error of a text that should fail.
fn one_error(file: &str, text: &str) -> DefinitionError {
    let mut errs = parse(file, text).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.remove(0)
}

fn assert_issue_example(regs: &[ServiceRegistration]) {
    assert_eq!(regs.len(), 2);
    assert_eq!(
        (regs[0].name.as_str(), regs[0].port),
        ("client", Some(8080))
    );
    let sidecar = regs[0]
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_ref())
        .unwrap();
    let upstreams = &sidecar.proxy.as_ref().unwrap().upstreams;
    assert_eq!(upstreams.len(), 1);
    assert_eq!(
        (
            upstreams.0[0].destination_name.as_str(),
            upstreams.0[0].local_bind_port
        ),
        ("echo", Some(9191))
    );
    assert_eq!((regs[1].name.as_str(), regs[1].port), ("echo", Some(9090)));
    let check = regs[1].check.as_ref().unwrap();
    assert_eq!(check.tcp.as_deref(), Some("127.0.0.1:9090"));
    assert_eq!(
        check.timeout.map(|t| t.to_string()).as_deref(),
        Some("500ms")
    );
    assert_eq!(
        regs[1]
            .connect
            .as_ref()
            .and_then(|c| c.sidecar_service.clone()),
        Some(Default::default())
    );
}

#[test]
fn issue_example_in_hcl_and_json() {
    for file in ["issue.hcl", "issue.json"] {
        let regs = load_file(&testdata(file)).unwrap();
        assert_issue_example(&regs);
    }
    // Validated together: the two services and their two sidecars.
    let paths = [testdata("issue.hcl")];
    let regs = check_files(&paths, &defaults()).unwrap();
    assert_eq!(regs.len(), 2);
    let mut next = 21000..=21255;
    let services: usize = regs
        .iter()
        .map(|(_, r)| {
            validate::validate_service(r, &defaults(), &mut || next.next())
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(services, 4);
}

#[test]
fn the_issue_text_parses_as_written() {
    // Consul's one-line blocks (HCL 1), exactly as the issue writes them.
    let regs = load_file(&testdata("issue_verbatim.hcl")).unwrap();
    assert_issue_example(&regs);
    // A syntax error on such a line is reported on the line the user wrote.
    let text =
        "services {\n  name = \"echo\"\n  check { tcp = \"127.0.0.1:9090\"  interval = }\n}\n";
    let err = one_error("echo.hcl", text);
    assert_eq!(err.line, Some(3), "{err}");
    assert!(err.message.starts_with("invalid HCL"), "{err}");
}

#[test]
fn singular_service_block() {
    let regs = parse("web.hcl", "service {\n  name = \"web\"\n  port = 80\n}\n").unwrap();
    assert_eq!((regs[0].name.as_str(), regs[0].port), ("web", Some(80)));
    let both = parse(
        "web.hcl",
        "service {\n  name = \"a\"\n}\nservices {\n  name = \"b\"\n}\n",
    )
    .unwrap();
    assert_eq!(
        both.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );

    let err = one_error(
        "web.hcl",
        "service {\n  name = \"a\"\n}\nservice {\n  name = \"b\"\n}\n",
    );
    assert_eq!((err.line, err.field.as_deref()), (Some(4), Some("service")));
    assert!(err.message.contains("use `services`"), "{err}");
}

#[test]
fn pascal_case_json() {
    let regs = parse(
        "web.json",
        r#"{"service": {"Name": "web", "Port": 80, "Check": {"TTL": "10s"}}}"#,
    )
    .unwrap();
    assert_eq!((regs[0].name.as_str(), regs[0].port), ("web", Some(80)));
    assert!(regs[0].check.as_ref().is_some_and(|c| c.ttl.is_some()));
}

#[test]
fn malformed_hcl_has_a_line() {
    let err = one_error("web.hcl", "services {\n  name = \"web\"\n  port = \n}\n");
    assert_eq!(err.line, Some(3));
    assert_eq!(err.field, None);
    assert!(
        err.to_string()
            .starts_with("web.hcl:3: invalid HCL at column"),
        "{err}"
    );
    let err = one_error("web.hcl", "services {\n  name = \"web\"\n");
    assert!(err.line.is_some(), "{err}");
}

#[test]
fn malformed_json_has_a_line() {
    let err = one_error(
        "web.json",
        "{\n  \"services\": [\n    {\"name\": \"web\",}\n  ]\n}\n",
    );
    assert_eq!(err.line, Some(3));
    assert!(err.message.starts_with("invalid JSON at column"), "{err}");
    let err = one_error("web.json", "{\"service\": {\"name\": \"web\"}}\n{}");
    assert_eq!(err.line, Some(2));
    assert!(err.message.contains("trailing characters"), "{err}");
}

#[test]
fn unknown_fields_are_named_with_their_line() {
    let hcl = "services {\n  name = \"web\"\n}\nservices {\n  name = \"echo\"\n  prot = 9090\n}\n";
    let err = one_error("echo.hcl", hcl);
    assert_eq!(
        err.to_string(),
        "echo.hcl:6: services[1].prot: unknown field `prot` (did you mean `port`?)"
    );

    // A block written once is item [0].
    let err = one_error(
        "echo.hcl",
        "services {\n  name = \"echo\"\n  prot = 9090\n}\n",
    );
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(3), Some("services[0].prot"))
    );

    let json = "{\"services\": [\n  {\"name\": \"echo\",\n   \"prot\": 9090}\n]}";
    let err = one_error("echo.json", json);
    assert_eq!(
        err.to_string(),
        "echo.json:3: services[0].prot: unknown field `prot` (did you mean `port`?)"
    );

    // Deep inside nested blocks, through `OneOrMany` (upstreams) and `Option` (connect, proxy).
    let hcl = "services {\n  name = \"c\"\n  connect {\n    sidecar_service {\n      proxy {\n        upstreams {\n          destination_name = \"a\"\n        }\n        upstreams {\n          destination = \"b\"\n        }\n      }\n    }\n  }\n}\n";
    let err = one_error("c.hcl", hcl);
    assert_eq!(
        err.field.as_deref(),
        Some("services[0].connect.sidecar_service.proxy.upstreams[1].destination")
    );
    assert_eq!(err.line, Some(10));
    let err = one_error(
        "c.hcl",
        "services {\n  name = \"c\"\n  check {\n    ttl = \"1s\"\n    color = \"red\"\n  }\n}\n",
    );
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(5), Some("services[0].check.color"))
    );
    assert!(
        err.message
            .starts_with("unknown field `color` (expected one of "),
        "{err}"
    );
    assert!(!err.message.contains("CheckID"), "{err}");
}

#[test]
fn unknown_top_level_key_is_named() {
    let err = one_error("web.hcl", "servce {\n  name = \"web\"\n}\n");
    assert_eq!(err.line, Some(1));
    assert!(
        err.message.contains("`servce` (did you mean `service`?)"),
        "{err}"
    );
    let err = one_error("web.json", "{\"checks\": []}");
    assert!(err.message.contains("unknown field `checks`"), "{err}");
}

#[test]
fn invalid_types_are_named() {
    let err = one_error(
        "web.hcl",
        "services {\n  name = \"web\"\n  port = \"eighty\"\n}\n",
    );
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(3), Some("services[0].port"))
    );
    assert!(err.message.contains("invalid type"), "{err}");
    let err = one_error(
        "web.json",
        "{\"service\": {\n\"name\": \"web\",\n\"tags\": \"a\"}}",
    );
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(3), Some("service.tags"))
    );
}

#[test]
fn extensions() {
    let err = one_error("web.txt", "service {}");
    assert_eq!(
        err.to_string(),
        "web.txt: unsupported file extension \".txt\" (expected .hcl or .json)"
    );
    assert!(parse("web", "service {}").is_err());
    assert!(parse("WEB.HCL", "service {\n  name = \"web\"\n}\n").is_ok());
    assert!(parse("empty.hcl", "").unwrap().is_empty());
    let err = load_file(&testdata("missing.hcl")).unwrap_err();
    assert!(
        err[0].message.starts_with("cannot read file: "),
        "{:?}",
        err[0]
    );
}

#[test]
fn check_files_reports_validation_errors_with_file_line_and_field() {
    let errs = check_files(&[testdata("echo.hcl")], &defaults()).unwrap_err();
    let shown: Vec<String> = errs
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&*testdata("").display().to_string(), "")
        })
        .collect();
    assert_eq!(
        shown,
        [
            "echo.hcl:7: services[1].port: port 70000 is outside 1–65535",
            "echo.hcl:8: services[1].check.interval: tcp checks need an interval (e.g. \"10s\")",
            "echo.hcl:9: services[1].check.tcp: tcp check address \"127.0.0.1\" must be host:port with a port in 1–65535",
        ]
    );
}

#[test]
fn check_files_collects_errors_across_files() {
    let paths = [
        testdata("echo.hcl"),
        testdata("nope.txt"),
        testdata("issue.json"),
        testdata("missing.json"),
    ];
    let errs = check_files(&paths, &defaults()).unwrap_err();
    let files: Vec<_> = errs
        .iter()
        .map(|e| e.file.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "nope.txt",
            "missing.json",
            "echo.hcl",
            "echo.hcl",
            "echo.hcl"
        ]
    );
}

#[test]
fn duplicate_ids_name_both_places() {
    let errs = load_dir(&testdata("dir_dup")).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert!(e.file.ends_with("b.json"));
    assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("service.id")));
    assert!(
        e.message
            .starts_with("duplicate service id \"echo\": already defined at "),
        "{e}"
    );
    assert!(e.message.ends_with("a.hcl:6 (services[1].name)"), "{e}");

    let paths = [testdata("dir_dup/a.hcl"), testdata("dir_dup/b.json")];
    let errs = check_files(&paths, &defaults()).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");

    // A sidecar id clashing with a service.
    let text = "services {\n  name = \"web\"\n  port = 80\n  connect {\n    sidecar_service {}\n  }\n}\nservices {\n  name = \"web-sidecar-proxy\"\n}\n";
    let dir = std::env::temp_dir().join(format!("plexus-def-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clash.hcl");
    std::fs::write(&path, text).unwrap();
    let errs = check_files(std::slice::from_ref(&path), &defaults()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        (errs[0].line, errs[0].field.as_deref()),
        (Some(9), Some("services[1].name"))
    );
    assert!(
        errs[0]
            .message
            .contains("(services[0].connect.sidecar_service)"),
        "{}",
        errs[0]
    );
}

#[test]
fn load_dir_reads_hcl_and_json_in_order() {
    let regs = load_dir(&testdata("dir_ok")).unwrap();
    let got: Vec<_> = regs
        .iter()
        .map(|(p, r)| (p.file_name().unwrap().to_str().unwrap(), r.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a-client.hcl", "client"),
            ("b-echo.json", "echo"),
            ("b-echo.json", "web")
        ]
    );
    let err = load_dir(&testdata("no-such-dir")).unwrap_err();
    assert!(
        err[0].message.starts_with("cannot read directory: "),
        "{:?}",
        err[0]
    );
}

#[test]
fn error_display_leaves_out_unknown_parts() {
    let mut e = DefinitionError {
        file: PathBuf::from("echo.hcl"),
        line: Some(7),
        field: Some("services[1].port".into()),
        message: "port 70000 is outside 1–65535".into(),
    };
    assert_eq!(
        e.to_string(),
        "echo.hcl:7: services[1].port: port 70000 is outside 1–65535"
    );
    e.line = None;
    assert_eq!(
        e.to_string(),
        "echo.hcl: services[1].port: port 70000 is outside 1–65535"
    );
    e.field = None;
    assert_eq!(e.to_string(), "echo.hcl: port 70000 is outside 1–65535");
}

#[test]
fn hcl_list_attributes_work_like_blocks() {
    let text = "services = [\n  { name = \"a\" },\n  { name = \"b\", prot = 1 },\n]\n";
    let err = one_error("x.hcl", text);
    assert_eq!(
        (err.line, err.field.as_deref()),
        (Some(3), Some("services[1].prot"))
    );
}

#[test]
fn hcl_is_strict_about_values_and_blocks() {
    let cases: &[(&str, &str, usize, &str)] = &[
        // Repeated single block: hcl-rs alone would decode it positionally into the wrong fields.
        (
            "services {\n  name = \"a\"\n  check {\n    ttl = \"1s\"\n  }\n  check {\n    ttl = \"2s\"\n  }\n}\n",
            "services[0].check",
            6,
            "block `check` may be written once (use `checks` blocks for several)",
        ),
        // hcl-rs alone would turn these into the strings "${80}" and "${var.p}".
        (
            "services {\n  name = 80\n}\n",
            "services[0].name",
            2,
            "invalid type: integer `80`, expected a string",
        ),
        (
            "services {\n  name = \"a\"\n  port = var.p\n}\n",
            "services[0].port",
            3,
            "only literal values are supported",
        ),
        (
            "services {\n  name = \"${x}\"\n}\n",
            "services[0].name",
            2,
            "only literal values are supported",
        ),
        (
            "service \"web\" {\n  name = \"web\"\n}\n",
            "service",
            1,
            "block `service` takes no labels",
        ),
        (
            "services {\n  name = \"a\"\n  connect = {}\n  connect {\n  }\n}\n",
            "services[0].connect",
            4,
            "`connect` is written both as an attribute and as a block",
        ),
    ];
    for (text, field, line, msg) in cases {
        let err = one_error("x.hcl", text);
        assert_eq!(
            (err.field.as_deref(), err.line),
            (Some(*field), Some(*line)),
            "{text}"
        );
        assert!(err.message.starts_with(msg), "{err}");
    }
    // Literals and operators on them are fine; so are object and list attributes.
    let regs = parse(
        "x.hcl",
        "services {\n  name = \"a\"\n  port = 8000 + 80\n  meta = { version = \"2\" }\n  tags = [\"x\", \"y\"]\n  checks = [{ ttl = \"1s\" }]\n}\n",
    )
    .unwrap();
    assert_eq!(regs[0].port, Some(8080));
    assert_eq!(regs[0].tags, ["x", "y"]);
    assert_eq!(regs[0].checks.len(), 1);
}

#[test]
fn all_hcl_shape_errors_at_once() {
    let text = "services {\n  name = var.a\n}\nservices {\n  name = var.b\n}\n";
    let errs = parse("x.hcl", text).unwrap_err();
    let got: Vec<_> = errs.iter().map(|e| (e.field.as_deref(), e.line)).collect();
    assert_eq!(
        got,
        [
            (Some("services[0].name"), Some(2)),
            (Some("services[1].name"), Some(5))
        ]
    );
}

#[test]
fn block_then_attribute_points_at_the_attribute() {
    let err = one_error(
        "x.hcl",
        "services {\n  name = \"a\"\n  connect {\n  }\n  connect = {}\n}\n",
    );
    assert_eq!(
        (err.field.as_deref(), err.line),
        (Some("services[0].connect"), Some(5))
    );
}

#[test]
fn json_lone_objects_are_item_zero() {
    let err = one_error(
        "x.json",
        "{\"services\": {\"name\": \"a\",\n \"Checks\": {\"TTL\": \"1s\", \"Colour\": 1}}}",
    );
    assert_eq!(
        (err.field.as_deref(), err.line),
        (Some("services[0].Checks[0].Colour"), Some(2))
    );
    let regs = parse(
        "x.json",
        "{\"services\": {\"name\": \"a\", \"checks\": {\"ttl\": \"1s\"}}}",
    )
    .unwrap();
    assert_eq!(regs[0].checks.len(), 1);
}

mod never_panics {
    //! Definition files come from users: no text may panic the parser (a stand-in for a fuzz
    //! target until the toolchain here has one).
    use proptest::prelude::*;

    use super::*;

    const PIECES: &[&str] = &[
        "services",
        "service",
        "check",
        "connect",
        "sidecar_service",
        "proxy",
        "upstreams",
        "name",
        "port",
        "tcp",
        "interval",
        "{",
        "}",
        "[",
        "]",
        "=",
        "\"",
        "\"x\"",
        "1",
        "70000",
        "\n",
        " ",
        "<<EOF\n",
        "EOF\n",
        "#",
        "//",
        "/*",
        "*/",
        "${",
        ",",
        ":",
        "-1",
        "1.5",
        "\\",
    ];

    fn hcl_like() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..60).prop_map(|p| p.join(""))
    }

    proptest! {
        #[test]
        fn hcl_never_panics(text in hcl_like()) {
            let _ = parse("p.hcl", &text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse("p.hcl", &text);
            let _ = parse("p.json", &text);
        }

        #[test]
        fn json_like_never_panics(text in "[{}\\[\\]\":,a-z0-9 \n]{0,80}") {
            let _ = parse("p.json", &text);
        }
    }
}
