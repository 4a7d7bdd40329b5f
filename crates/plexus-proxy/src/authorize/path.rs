//! A request path in normal form, for L7 intentions: permissions test the path the app will act
//! on, so `/v2/../admin`, `//admin` and `/%61dmin` must not pass a rule about `/admin` (Envoy's
//! `normalize_path` and `merge_slashes` do the same for the Envoy data plane).

use std::borrow::Cow;

/// `path` with unreserved characters' `%XX` decoded, empty segments merged and `.`/`..`
/// segments resolved (RFC 3986 §5.2.4, never above the root); borrowed when already so. A path
/// that does not start with `/` (`*`) is left alone.
pub(crate) fn normal(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/')
        || (!path.contains("//") && !path.contains("/.") && !path.contains('%'))
    {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_in_directory = false;
    for segment in decoded.split('/').skip(1) {
        ends_in_directory = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_directory || segments.is_empty() {
        out.push('/');
    }
    if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    }
}

/// Decodes `%XX` where the byte is unreserved (letters, digits, `-._~`); other escapes stay.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
            && (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(byte));
            i += 3;
            continue;
        }
        // Copy up to the next `%` (paths are ASCII on the wire; any UTF-8 is kept whole).
        let next = path[i + 1..].find('%').map_or(bytes.len(), |n| i + 1 + n);
        out.push_str(&path[i..next]);
        i = next;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resolves_dots_merges_slashes_and_decodes_unreserved() {
        for (raw, expected) in [
            ("/", "/"),
            ("/v2/widgets", "/v2/widgets"),
            ("/v2/../admin", "/admin"),
            ("/v2/./widgets/", "/v2/widgets/"),
            ("/../../etc", "/etc"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/%61dmin", "/admin"),
            ("/v2/%2e%2e/admin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/100%", "/100%"),
            ("*", "*"),
        ] {
            assert_eq!(normal(raw), expected, "{raw}");
        }
        assert!(matches!(normal("/v2/widgets?x"), Cow::Borrowed(_)));
    }

    proptest! {
        /// Normal form has no `.`/`..` segments or empty ones, even spelt `%2e`, and starts
        /// with `/`; without escapes it is a fixed point (an escape can spell another one, as
        /// `%6%61`: decoded once, as the app decodes it).
        #[test]
        fn normal_is_normal(raw in "/[a-c./%2eE61]{0,16}") {
            let once = normal(&raw).into_owned();
            if !raw.contains('%') {
                let twice = normal(&once).into_owned();
                prop_assert_eq!(twice, once.clone());
            }
            prop_assert!(once.starts_with('/'));
            let inner = once.trim_end_matches('/');
            prop_assert!(!inner.split('/').skip(1).any(|s| s.is_empty() || s == "." || s == ".."), "{}", once);
        }
    }
}
