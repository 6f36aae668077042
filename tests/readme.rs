//! The README's grpcurl calls against the contract: every method they call exists, every
//! type they describe exists, and every request body they send is a valid JSON request of
//! the method (proto3 JSON mapping, unknown fields refused). An operator copies these calls;
//! a renamed field or enum value in `proto/` must not leave them wrong.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};

/// The calls in the README's code blocks, each as its shell words.
fn readme_calls() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut calls = Vec::new();
    // Between every other pair of fences: the code blocks.
    for block in readme.split("```").skip(1).step_by(2) {
        let mut rest = block;
        while let Some(start) = rest.find("grpcurl ") {
            let (words, after) = shell_words(&rest[start..]);
            rest = after;
            calls.push(words);
        }
    }
    calls
}

/// Splits one shell command at the start of `text` into words (single and double quotes,
/// backslash-newline continuations): the words, and the text after the command.
fn shell_words(text: &str) -> (Vec<String>, &str) {
    let (mut words, mut word, mut quote) = (Vec::new(), None::<String>, None::<char>);
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '\\') if chars.peek().map(|&(_, n)| n) == Some('\n') => {
                chars.next();
            }
            (None, '\n' | '`') => {
                words.extend(word.take());
                return (words, &text[i..]);
            }
            (None, ' ' | '\t') => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    (words, "")
}

fn contract() -> DescriptorPool {
    let mut pool = DescriptorPool::decode(mailroom::proto::FILE_DESCRIPTOR_SET).unwrap();
    pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .unwrap();
    pool
}

/// The method `mailroom.v1.Service/Method` names.
fn method(pool: &DescriptorPool, path: &str) -> Option<MethodDescriptor> {
    let (service, name) = path.split_once('/')?;
    pool.get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == name)
}

#[test]
fn every_grpcurl_call_in_the_readme_fits_the_contract() {
    let pool = contract();
    let calls = readme_calls();
    assert!(
        calls.len() >= 30,
        "only {} grpcurl calls found",
        calls.len()
    );
    let mut bodies = 0;
    let mut called = std::collections::BTreeSet::new();
    for words in &calls {
        let call = words.join(" ");
        if let Some(at) = words.iter().position(|w| w == "describe") {
            let symbol = &words[at + 1];
            assert!(
                pool.get_service_by_name(symbol).is_some()
                    || pool.get_message_by_name(symbol).is_some(),
                "no such service or message: {call}"
            );
            continue;
        }
        if words.iter().any(|w| w == "list") {
            continue;
        }
        let path = words.last().expect("a call has words");
        let method = method(&pool, path).unwrap_or_else(|| panic!("no such method: {call}"));
        called.insert(method.full_name().to_string());
        let Some(at) = words.iter().position(|w| w == "-d") else {
            continue;
        };
        let body = &words[at + 1];
        let mut json = serde_json::Deserializer::from_str(body);
        DynamicMessage::deserialize(method.input(), &mut json)
            .and_then(|_| json.end())
            .unwrap_or_else(|e| panic!("{e}: {call}"));
        bodies += 1;
    }
    assert!(bodies >= 25, "only {bodies} request bodies checked");
    let uncalled: Vec<String> = pool
        .services()
        .filter(|s| s.package_name() == "mailroom.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .map(|m| m.full_name().to_string())
        .filter(|m| !called.contains(m))
        .collect();
    assert!(
        uncalled.is_empty(),
        "the README shows no call of {uncalled:?}"
    );
}

#[test]
fn a_misspelt_field_or_enum_value_is_refused() {
    let pool = contract();
    let issue = method(&pool, "mailroom.v1.Token/IssueToken").unwrap();
    let parse = |body: &str| {
        let mut json = serde_json::Deserializer::from_str(body);
        DynamicMessage::deserialize(issue.input(), &mut json).map(|_| ())
    };
    assert!(parse(r#"{"purpose": "TOKEN_PURPOSE_PASSWORD_RESET", "login": "a"}"#).is_ok());
    assert!(parse(r#"{"purpose": "TOKEN_PURPOSE_RESET", "login": "a"}"#).is_err());
    assert!(parse(r#"{"purpose": "TOKEN_PURPOSE_PASSWORD_RESET", "user": "a"}"#).is_err());
}

#[test]
fn a_call_is_split_into_its_shell_words() {
    let text = "grpcurl -H \"$KEY\" -d '{\n  \"a\": \"x y\"\n}' \\\n  host mailroom.v1.T/M\nnext";
    let (words, rest) = shell_words(text);
    assert_eq!(
        words,
        [
            "grpcurl",
            "-H",
            "$KEY",
            "-d",
            "{\n  \"a\": \"x y\"\n}",
            "host",
            "mailroom.v1.T/M"
        ]
    );
    assert_eq!(rest, "\nnext");
}
