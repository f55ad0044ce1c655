//! The last [`CAPACITY`] warnings and errors the server logged, for the
//! console's "Recent errors": a `tracing_subscriber` layer (added in
//! `init_logging`) copies each WARN/ERROR event into a bounded ring. The
//! ring is process-wide because logging starts before the server exists.
//! Warnings are rare (a failing backend, a refused start-up setting), so a
//! mutex held for one push is not on any request's hot path; each field is
//! cut to [`MAX_FIELD`] bytes, so the ring's memory is bounded too.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many events the console shows.
pub const CAPACITY: usize = 50;
/// Longest message or field value kept, in bytes.
const MAX_FIELD: usize = 1024;

/// One logged warning or error.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub time: SystemTime,
    pub level: Level,
    pub target: String,
    pub message: String,
    /// The event's other fields (`peer`, `path`, `key`, `error`, ...),
    /// which name the request when there was one.
    pub fields: Vec<(String, String)>,
}

fn ring() -> &'static Mutex<VecDeque<LoggedEvent>> {
    static RING: OnceLock<Mutex<VecDeque<LoggedEvent>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(CAPACITY)))
}

/// The events kept, newest first.
pub fn recent() -> Vec<LoggedEvent> {
    bazel_cache_digest::lock(ring())
        .iter()
        .rev()
        .cloned()
        .collect()
}

/// The layer `init_logging` adds next to the log writer.
pub fn layer() -> RecentErrors {
    RecentErrors
}

pub struct RecentErrors;

fn cut(mut s: String) -> String {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record(field, text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = cut(value);
        } else if self.others.len() < 16 {
            self.others.push((field.name().to_string(), cut(value)));
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let logged = LoggedEvent {
            time: SystemTime::now(),
            level,
            target: event.metadata().target().to_string(),
            message: fields.message,
            fields: fields.others,
        };
        let mut ring = bazel_cache_digest::lock(ring());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(logged);
    }
}
