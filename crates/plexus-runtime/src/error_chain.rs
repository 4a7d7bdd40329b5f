//! Displaying an error with its causes on one line, for log fields and messages that leave the
//! process (check output, error responses).

use std::error::Error;
use std::fmt;

/// Displays an error and its `source()` chain as `outer: inner: root`.
///
/// Each error's `Display` describes its own layer only (STYLE 6), so the chain is how the whole
/// story gets told. A cause whose text the previous one already ends with is skipped: some
/// foreign errors repeat their source in their own message.
///
/// ```
/// # use plexus_runtime::ErrorChain;
/// let error = std::io::Error::other("connection refused");
/// tracing::warn!(error = %ErrorChain(&error), "connect failed");
/// assert_eq!(ErrorChain(&error).to_string(), "connection refused");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !previous.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            previous = text;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<dyn Error + 'static>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    fn chain(layers: &[&'static str]) -> Layer {
        let mut error: Option<Box<dyn Error>> = None;
        for text in layers.iter().rev() {
            error = Some(Box::new(Layer(text, error)));
        }
        Layer("top", error)
    }

    #[test]
    fn outer_to_root() {
        assert_eq!(ErrorChain(&Layer("alone", None)).to_string(), "alone");
        assert_eq!(
            ErrorChain(&chain(&["connect to 10.0.0.1:80", "connection refused"])).to_string(),
            "top: connect to 10.0.0.1:80: connection refused"
        );
    }

    #[test]
    fn a_cause_repeated_by_its_parent_is_written_once() {
        let error = Layer(
            "request failed: timed out",
            Some(Box::new(Layer("timed out", None))),
        );
        assert_eq!(ErrorChain(&error).to_string(), "request failed: timed out");
        assert_eq!(
            format!("{:?}", ErrorChain(&error)),
            "request failed: timed out"
        );
    }
}
