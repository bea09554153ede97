//! The shared protocol table, `tests/fixtures/wire.json`, against a real
//! server on a real Unix socket running the reference handler.
//!
//! The table is the contract other implementations are checked against
//! too, so one test walks all of it and reports every row that fails, with
//! what was sent, what was wanted and what came back.

mod common;

use std::path::Path;

use common::{show, wire_cases, wire_fixture_path, Answer, TestServer, WireCase};

#[test]
fn every_wire_case_gets_its_answer() {
    let server = TestServer::reference("wire");
    let cases = wire_cases();
    assert!(!cases.is_empty(), "the wire table has no cases");

    let mut failures = Vec::new();
    for case in &cases {
        let outcome = common::try_exchange(server.path(), &case.request).and_then(|answer| {
            let mismatches = mismatches(case, &answer);
            if mismatches.is_empty() {
                Ok(())
            } else {
                Err(format!("{}\n    got:   {answer}", mismatches.join("; ")))
            }
        });
        if let Err(why) = outcome {
            failures.push(format!(
                "{}\n    sent:  {}\n    want:  {}\n    why:   {why}",
                case.name,
                show(&case.request),
                describe(case)
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} wire cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Everything about `answer` that the row does not allow.
fn mismatches(case: &WireCase, answer: &Answer) -> Vec<String> {
    let mut found = Vec::new();

    if answer.status != case.status {
        found.push(format!(
            "status {} instead of {}",
            answer.status, case.status
        ));
    }
    if let Some(want) = &case.response {
        if answer.body != want.as_bytes() {
            found.push("body differs".to_owned());
        }
    }
    if let Some(prefix) = &case.response_prefix {
        if !answer.body.starts_with(prefix.as_bytes()) {
            found.push(format!("body does not start with {prefix:?}"));
        }
    }
    if let Some(want) = &case.content_type {
        let got = answer.header("content-type");
        if got != Some(want.as_str()) {
            found.push(format!("Content-Type {got:?} instead of {want:?}"));
        }
    }
    for (name, want) in &case.headers {
        let got = answer.header(name);
        if got != Some(want.as_str()) {
            found.push(format!("header {name} is {got:?} instead of {want:?}"));
        }
    }
    // No row but the one with `Expect: 100-continue` may see an interim
    // answer.
    let want_interim: Vec<String> = case.interim.iter().cloned().collect();
    if answer.interim != want_interim {
        found.push(format!(
            "interim answers {:?} instead of {want_interim:?}",
            answer.interim
        ));
    }
    if let Err(why) = answer.check_connection_close() {
        found.push(why);
    }
    found
}

fn describe(case: &WireCase) -> String {
    let mut parts = vec![format!("status {}", case.status)];
    if let Some(interim) = &case.interim {
        parts.insert(0, format!("[{interim}]"));
    }
    if let Some(body) = &case.response {
        parts.push(format!("body {}", show(body.as_bytes())));
    }
    if let Some(prefix) = &case.response_prefix {
        parts.push(format!("body starting {}", show(prefix.as_bytes())));
    }
    if let Some(content_type) = &case.content_type {
        parts.push(format!("Content-Type: {content_type}"));
    }
    for (name, value) in &case.headers {
        parts.push(format!("{name}: {value}"));
    }
    parts.push("connection: close".to_owned());
    parts.join(" | ")
}

/// The table travels with the repository because CI may not have the
/// shared folder; where that folder is present (a developer's checkout),
/// the copy must not have drifted from it.
#[test]
fn wire_fixture_is_a_verbatim_copy_of_the_shared_table() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cases/wire.json");
    let Ok(original) = std::fs::read(&shared) else {
        return;
    };
    let copy = std::fs::read(wire_fixture_path()).expect("the fixture is readable");
    assert!(
        copy == original,
        "tests/fixtures/wire.json differs from {}: copy it again",
        shared.display()
    );
}

/// The table reader itself: a row it misread would make the table test
/// check nothing.
#[test]
fn wire_table_is_read_completely() {
    let cases = wire_cases();
    let names: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "row names must be unique");

    let add = cases.iter().find(|c| c.name == "add").expect("an add row");
    assert!(add.is_body);
    assert_eq!(add.status, 200);
    assert_eq!(
        add.response.as_deref(),
        Some(common::reference_add_result("/var/run/netns/cni-1234").as_str())
    );

    let escape = cases
        .iter()
        .find(|c| c.name == "add netns needing JSON escape")
        .expect("an escaping row");
    // The JSON escapes of the file are undone once: the body holds them.
    let netns = br#""CNI_NETNS": "/run/netns/a\"b\\c","#;
    assert!(
        escape.request.windows(netns.len()).any(|w| w == netns),
        "escaped netns not found in {}",
        show(&escape.request)
    );

    let expect = cases
        .iter()
        .find(|c| c.interim.is_some())
        .expect("a row with an interim answer");
    assert_eq!(expect.interim.as_deref(), Some("HTTP/1.1 100 Continue"));
    assert!(expect.request.starts_with(b"POST / HTTP/1.1\r\n"));

    let get = cases
        .iter()
        .find(|c| c.name == "GET / is 405 with Allow")
        .expect("a GET row");
    assert!(!get.is_body);
    assert!(get
        .headers
        .contains(&("allow".to_owned(), "POST".to_owned())));
}
