//! The model boundary: loading, warming up and running one model version
//! happen inside [`isolated`], so a panic in the engine becomes an error of
//! that version instead of taking the server down. Typed errors are the
//! first line of defence; this is the last.
//!
//! A version whose run panicked is marked failed in its [`Health`]: the
//! engine's state after a panic cannot be trusted, so the version stops
//! serving (readiness and the repository index say why) until it is loaded
//! again. An allocation failure aborts the process and cannot be caught
//! here; the engine's allocation checks are what prevent that.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// Runs `f`, turning a panic into `Err` with the panic's message, prefixed
/// by `what` (e.g. "loading model `m` version 1").
pub(crate) fn isolated<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = format!("the engine panicked while {what}: {}", panic_message(payload.as_ref()));
            log::error!("{msg}");
            Err(msg)
        }
    }
}

/// The text of a panic payload (`panic!` with a string or a format).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Whether a loaded model version still serves: `None` while healthy, the
/// reason once it failed.
#[derive(Debug, Default)]
pub(crate) struct Health(Mutex<Option<String>>);

impl Health {
    /// Marks the version failed (the first reason is kept).
    pub fn fail(&self, why: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(why.to_string());
        }
    }

    /// The reason the version failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let r: Result<(), String> = isolated("running model `m` version 1", || panic!("index 7 out of bounds"));
        let e = r.unwrap_err();
        assert!(e.contains("running model `m` version 1"), "{e}");
        assert!(e.contains("index 7 out of bounds"), "{e}");
        let r: Result<(), String> = isolated("loading", || {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            Err(format!("{}", v[i]))
        });
        assert!(r.unwrap_err().contains("index out of bounds"));
    }

    #[test]
    fn errors_and_values_pass_through() {
        assert_eq!(isolated("x", || Ok::<_, String>(3)), Ok(3));
        assert_eq!(isolated::<()>("x", || Err("typed".into())), Err("typed".to_string()));
    }

    #[test]
    fn health_keeps_the_first_reason() {
        let h = Health::default();
        assert_eq!(h.failure(), None);
        h.fail("first");
        h.fail("second");
        assert_eq!(h.failure().as_deref(), Some("first"));
    }
}
