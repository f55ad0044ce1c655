//! Just enough XML for S3's answers: the `<Code>` and `<Message>` of an
//! error document, the root element (to spot an `<Error>` sent with 200 OK),
//! single text elements such as `<UploadId>`, and escaping for the one
//! document we send (CompleteMultipartUpload). S3's documents are flat and
//! small, so a full XML parser would be more dependency than help.

/// `<Code>` and `<Message>` of an S3 error document.
pub(super) fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    if body.is_empty() {
        return (None, None);
    }
    let text = String::from_utf8_lossy(body);
    let code = xml_element(&text, "Code").filter(|c| !c.is_empty());
    let message = xml_element(&text, "Message").filter(|m| !m.is_empty());
    (code, message)
}

/// The name of the document's root element, skipping the XML declaration,
/// comments and processing instructions.
pub(super) fn xml_root(xml: &str) -> Option<&str> {
    let mut rest = xml;
    loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            let end = rest.find('>')?;
            rest = &rest[end + 1..];
            continue;
        }
        let end = rest
            .find(|c: char| c == '>' || c == '/' || c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        return Some(&rest[..end]);
    }
}

/// The text of the first `<name>` element (attributes allowed, no nested
/// elements expected), entity-decoded; `Some("")` for `<name/>`.
pub(super) fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut from = 0;
    while let Some(pos) = xml[from..].find(&open) {
        let after = from + pos + open.len();
        let rest = &xml[after..];
        match rest.chars().next() {
            Some('>') => {
                let body = &rest[1..];
                let end = body.find(&close)?;
                return Some(xml_unescape(&body[..end]));
            }
            Some(c) if c.is_ascii_whitespace() || c == '/' => {
                let gt = rest.find('>')?;
                if rest[..gt].ends_with('/') {
                    return Some(String::new());
                }
                let body = &rest[gt + 1..];
                let end = body.find(&close)?;
                return Some(xml_unescape(&body[..end]));
            }
            // A longer name with the same prefix (<CodeX>): keep looking.
            _ => from = after,
        }
    }
    None
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_error_documents() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match &amp; &lt;so&gt; &#x41;&#66;</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>"#;
        let (code, message) = parse_error_body(body);
        assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            message.as_deref(),
            Some("The request signature we calculated does not match & <so> AB")
        );
        assert_eq!(xml_root(std::str::from_utf8(body).unwrap()), Some("Error"));
        assert_eq!(parse_error_body(b""), (None, None));
        assert_eq!(parse_error_body(b"not xml at all"), (None, None));
        assert_eq!(parse_error_body(b"<Error><Code>Trunc"), (None, None));
        // Longer names sharing a prefix and empty elements.
        assert_eq!(
            xml_element("<CodeX>no</CodeX><Code/><Code>yes</Code>", "Code").as_deref(),
            Some("")
        );
        assert_eq!(
            xml_element("<CodeX>no</CodeX><Code>yes</Code>", "Code").as_deref(),
            Some("yes")
        );
        assert_eq!(
            xml_element(r#"<R xmlns="x"><UploadId>abc</UploadId></R>"#, "UploadId").as_deref(),
            Some("abc")
        );
        assert_eq!(xml_unescape("a &bogus; b & c"), "a &bogus; b & c");
    }

    #[test]
    fn finds_the_root_element() {
        assert_eq!(
            xml_root(
                "<?xml version=\"1.0\"?>\n<!-- c --><CopyObjectResult><ETag>x</ETag></CopyObjectResult>"
            ),
            Some("CopyObjectResult")
        );
        assert_eq!(xml_root("  \n <Error>"), Some("Error"));
        assert_eq!(xml_root("<Error xmlns=\"x\">"), Some("Error"));
        assert_eq!(xml_root(""), None);
    }
}
