//! The file token source: one token for both services, kept fresh by another tool (e.g. a
//! sidecar that talks to the STS itself).
//!
//! Only the reading is here; when to read and what to publish is the manager's polling
//! task, so the file and STS sources share one way of publishing, failing and waiting.

use std::path::Path;

use super::model::{Token, TokenError, decode_token_text};

/// Reads a token file: XML (or base64 of XML), surrounding white space dropped.
pub fn read_token_file(path: &Path) -> Result<Token, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let xml = decode_token_text(&text).ok_or_else(|| TokenError::NotXml {
        origin: origin.clone(),
        detail: if text.trim().is_empty() {
            "the file is empty".into()
        } else {
            "neither XML nor base64 of XML".into()
        },
    })?;
    Token::from_xml(xml, &origin)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::assertion;
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use std::time::{Duration, SystemTime};

    #[test]
    fn reads_xml_or_base64_and_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.xml");
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let xml = assertion("file", Some(exp), "MARK");

        std::fs::write(&path, format!("\n{xml}\n")).unwrap();
        let t = read_token_file(&path).unwrap();
        assert_eq!(t.xml.expose(), &xml);
        assert_eq!(t.expires_at, Some(exp));

        std::fs::write(&path, BASE64.encode(&xml)).unwrap();
        assert_eq!(read_token_file(&path).unwrap().xml.expose(), &xml);

        for (content, expected) in [
            (" \n", "the file is empty"),
            ("bm90IHhtbA==", "neither XML nor base64"),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = read_token_file(&path).unwrap_err().to_string();
            assert!(e.contains("token.xml") && e.contains(expected), "{e}");
        }

        std::fs::remove_file(&path).unwrap();
        let e = read_token_file(&path).unwrap_err();
        assert!(matches!(e, TokenError::File { .. }), "{e}");
        assert!(e.to_string().contains("token.xml"), "{e}");
    }
}
