//! Just enough `multipart/form-data` (RFC 7578) for the explain page's
//! two file fields: the boundary from the `Content-Type`, each part's
//! `name` from its `Content-Disposition`, its bytes as sent. Input is a
//! body already read within the caller's bound. Public for the fuzz
//! target (`fuzz/fuzz_targets/multipart.rs`).

/// The boundary parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        // RFC 2046's bchars: no CR or LF, so the delimiter "\r\n--" +
        // boundary holds one CR, and searching for it stays linear.
        let bchars = v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b));
        (!v.is_empty() && v.len() <= 70 && bchars).then(|| v.to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        let at = i + haystack[i..].iter().position(|b| *b == first)?;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// A part's field name and bytes.
pub struct Part<'a> {
    pub name: String,
    pub data: &'a [u8],
}

fn part_name(headers: &str) -> Option<String> {
    headers.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        v.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k == "name").then(|| v.trim_matches('"').to_string())
        })
    })
}

/// The parts of `body`, or why it is not `multipart/form-data`.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or("no multipart boundary in the body")?
        + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err("malformed multipart body (no line break after a boundary)".into());
        }
        at += 2;
        let head_end =
            find(body, b"\r\n\r\n", at).ok_or("malformed multipart part (no header end)")?;
        let headers = std::str::from_utf8(&body[at..head_end])
            .map_err(|_| "multipart part headers are not UTF-8")?;
        let name = part_name(headers).ok_or("a multipart part has no name")?;
        let data_start = head_end + 4;
        let end = find(body, next_delimiter.as_bytes(), data_start)
            .ok_or("the multipart body ends without its closing boundary")?;
        parts.push(Part {
            name,
            data: &body[data_start..end],
        });
        at = end + next_delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_two_files() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("text/plain; boundary=abc"), None);
        assert_eq!(boundary("multipart/form-data; boundary=a\rb"), None);
        let body =
            b"--XX\r\nContent-Disposition: form-data; name=\"before\"; filename=\"a.json\"\r\n\
            Content-Type: application/json\r\n\r\n{\"a\":1}\r\n--XX\r\n\
            Content-Disposition: form-data; name=\"after\"\r\n\r\nline\r\n--x\r\n--XX--\r\n";
        let parts = parse(body, "XX").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].data),
            ("before", &b"{\"a\":1}"[..])
        );
        assert_eq!(
            (parts[1].name.as_str(), parts[1].data),
            ("after", &b"line\r\n--x"[..])
        );
        assert!(
            parse(
                b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
                "XX"
            )
            .is_err()
        );
        assert!(parse(b"garbage", "XX").is_err());
    }
}
