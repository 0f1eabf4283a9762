//! The npm package's error codes are the engine's and the server's: every code either
//! side can send is in `js-package/src/errors.ts` (so an app can branch on it with a
//! typed `code`), and the package lists no code that nothing sends.

use std::collections::BTreeSet;

use warren_core::ErrorCode;

fn read(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `"UPPER_CASE"` string literal in `text`.
fn quoted_codes(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.len() > 3 && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

/// The part of `text` from `start` to the next `end`.
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let i = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let rest = &text[i..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

#[test]
fn the_package_knows_every_code_and_no_other() {
    let mut sent: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    let protocol = read("wasm-core/src/protocol.rs");
    sent.extend(quoted_codes(section(&protocol, "pub mod codes", "\n}")));
    let auth = read("sync-server/src/auth.rs");
    sent.extend(quoted_codes(section(
        &auth,
        "pub fn code(&self)",
        "\n    }",
    )));
    let replica = read("wasm-core/src/replica.rs");
    assert!(replica.contains("\"SEQUENCE_GAP\""));
    sent.insert("SEQUENCE_GAP".into());

    let ts = read("js-package/src/errors.ts");
    let mut listed = BTreeSet::new();
    // The package's own codes (CLIENT_CODES, such as NOT_CONNECTED) come from no
    // server or engine: they are left out.
    for decl in ts.split("export const ").skip(1) {
        let Some((name, list)) = decl.split_once("_CODES = [") else {
            continue;
        };
        if name == "CLIENT" || name.contains(char::is_whitespace) {
            continue;
        }
        listed.extend(quoted_codes(
            &list[..list.find(']').expect("a closing bracket")],
        ));
    }
    let missing: Vec<_> = sent.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&sent).collect();
    assert!(
        missing.is_empty(),
        "codes the package does not list: {missing:?}"
    );
    assert!(extra.is_empty(), "codes nothing sends: {extra:?}");
    assert!(listed.len() > 40, "{listed:?}");
}
