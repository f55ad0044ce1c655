//! One line for an error and its causes. hyper, tonic, rustls and the
//! standard library put the useful part ("connection refused", "invalid
//! peer certificate") in the `source()` chain, which `Display` of the outer
//! error leaves out.

use std::error::Error;
use std::fmt;

/// `e` and every cause below it, joined with `": "`. A cause whose text the
/// message so far already contains (many errors quote their source) is not
/// repeated.
pub fn error_chain(e: &dyn Error) -> String {
    ErrorChain(e).to_string()
}

/// [`error_chain`] as a `Display` adapter, for `format!` and log fields
/// without an intermediate `String` per call site:
/// `tracing::warn!(error = %ErrorChain(&e), "...")`.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The dedup check needs the text written so far.
        let mut message = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&message)
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
    struct E(&'static str, Option<Box<E>>);

    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn chain(texts: &[&'static str]) -> E {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| Some(E(text, source.map(Box::new))))
            .expect("at least one error")
    }

    #[test]
    fn causes_are_appended_in_order() {
        let e = chain(&["client error (Connect)", "tcp connect error", "refused"]);
        assert_eq!(
            error_chain(&e),
            "client error (Connect): tcp connect error: refused"
        );
        assert_eq!(format!("{}", ErrorChain(&e)), error_chain(&e));
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let e = chain(&["reading body: timed out", "timed out", "", "os error 110"]);
        assert_eq!(error_chain(&e), "reading body: timed out: os error 110");
        assert_eq!(error_chain(&chain(&["alone"])), "alone");
    }

    #[test]
    fn std_errors_work_as_they_are() {
        let io = std::io::Error::other("disk on fire");
        assert_eq!(error_chain(&io), "disk on fire");
    }
}
