//! Writes every built-in email in every language, rendered over the sample values
//! PreviewEmail uses, into a folder: `<kind>.<lang>.html` and `<kind>.<lang>.txt`, for
//! `scripts/screenshot-emails` (which screenshots each HTML part with headless Chromium).
//!
//! `cargo run --example preview-emails -- <folder>`

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailroom::locale::Lang;
use mailroom::notify::builtin::render;
use mailroom::notify::{Chosen, EmailKind};
use mailroom::templates::samples;

fn main() -> anyhow::Result<()> {
    let folder = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/emails".into());
    std::fs::create_dir_all(&folder)?;
    // A fixed time, so that the screenshots change only when the emails do.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_057_600);
    for kind in EmailKind::ALL {
        for lang in Lang::ALL {
            let chosen = Chosen {
                lang,
                source: Arc::new(kind.builtin(lang).clone()),
                platform: "TheHive".into(),
            };
            let email = render(&chosen, &samples(kind, "acme", now))
                .map_err(|e| anyhow::anyhow!("{}/{lang}: {e}", kind.name()))?;
            let stem = format!("{folder}/{}.{lang}", kind.name());
            std::fs::write(format!("{stem}.html"), email.html.unwrap_or_default())?;
            std::fs::write(
                format!("{stem}.txt"),
                format!("Subject: {}\n\n{}", email.subject, email.text),
            )?;
            println!("{stem}.html");
        }
    }
    Ok(())
}
