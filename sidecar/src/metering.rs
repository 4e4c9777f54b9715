//! Metering: what a call cost, in exact decimal dollars, and the accounting
//! task that settles budget reservations and forwards spend off the hot path.
//!
//! The request path computes a [`Metered`] value when a call ends (from the
//! provider's usage, or an estimate marked as such) and hands an
//! [`UsageRecord`] to [`Accountant::submit`], which never awaits: the record
//! goes through a bounded channel to [`run_accounting`]. When the channel is
//! full the record is settled inline instead (a few uncontended mutex
//! operations), so spend is never lost and a response is never blocked; the
//! number of such overflows is counted for metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_crds::budget::Spend;
use sluice_crds::provider::Pricing;
use sluice_crds::units::Money;
use tokio::sync::mpsc;

use crate::budget::Reservation;
use crate::openai::{ChatRequest, StreamOptions, Usage};

/// The pricing of a model without one: everything costs nothing (tokens
/// and requests are still counted).
pub const FREE: Pricing = Pricing {
    input_per_million: Money::ZERO,
    output_per_million: Money::ZERO,
    cached_input_per_million: None,
};

/// The exact cost of `usage` at `pricing`.
///
/// Cached prompt tokens are charged at `cachedInputPerMillion` when the
/// model has one and at the input price otherwise; cached tokens beyond the
/// prompt count (a provider bug) are clamped to it.
pub fn cost(pricing: &Pricing, usage: &Usage) -> Money {
    let cached = usage.cached_tokens().min(usage.prompt_tokens);
    let uncached = usage.prompt_tokens - cached;
    let cached_price = pricing
        .cached_input_per_million
        .unwrap_or(pricing.input_per_million);
    Money::per_million(pricing.input_per_million, uncached)
        + Money::per_million(cached_price, cached)
        + Money::per_million(pricing.output_per_million, usage.completion_tokens)
}

/// The most a call can cost: the estimated prompt, none of it cached, plus
/// `max_output_tokens` of output. This is what a budget reserves up front.
pub fn worst_case(pricing: &Pricing, input_estimate: u64, max_output_tokens: u64) -> Spend {
    let usage = Usage::new(input_estimate, max_output_tokens, 0);
    Spend {
        cost_usd: cost(pricing, &usage),
        tokens: input_estimate.saturating_add(max_output_tokens),
        requests: 1,
    }
}

/// Tokens of `text`, estimated before (or without) the provider's count:
/// `o200k_base`, exact up to [`crate::tokens::EXACT_BYTES`] and
/// extrapolated beyond. For a known model, [`estimate_tokens_for`].
pub fn estimate_tokens(text: &str) -> u64 {
    crate::tokens::text_baseline(text)
}

/// Tokens of `text` on `model` (its own encoding for OpenAI models, a
/// scaled `o200k_base` count for others; see [`crate::tokens`]).
pub fn estimate_tokens_for(text: &str, model: &str) -> u64 {
    crate::tokens::text_tokens(text, model)
}

/// The prompt tokens of a request, estimated for the model it names:
/// message texts, names and tool calls with OpenAI's per-message framing,
/// tool definitions, images by OpenAI's tile rule. For a route's virtual
/// model this is the `o200k_base` count routing also uses
/// ([`crate::route::RequestInfo::input_tokens`]), so either can be reused.
pub fn estimate_input_tokens(req: &ChatRequest) -> u64 {
    crate::tokens::chat_tokens(req, &req.model)
}

/// The prompt tokens of a request on the `model` it was routed to (for
/// the usage of a call whose provider reported none).
pub fn estimate_input_tokens_for(req: &ChatRequest, model: &str) -> u64 {
    crate::tokens::chat_tokens(req, model)
}

/// Asks a streaming request for the final usage chunk
/// (`stream_options.include_usage`), so streams are metered from the
/// provider's counts. Returns whether the client had asked for it itself:
/// when it had not, the pipeline drops the usage chunk before the client.
pub fn request_stream_usage(req: &mut ChatRequest) -> bool {
    if !req.is_stream() {
        return false;
    }
    let opts = req.stream_options.get_or_insert_with(|| StreamOptions {
        include_usage: None,
        extra: serde_json::Map::new(),
    });
    let asked = opts.include_usage == Some(true);
    opts.include_usage = Some(true);
    asked
}

/// A finished call's usage and cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metered {
    pub usage: Usage,
    /// True when the provider reported no usage and the counts are the
    /// sidecar's own estimate.
    pub estimated: bool,
    pub cost: Money,
}

impl Metered {
    /// Meters a call from the provider's usage, or from `estimate` (prompt
    /// tokens estimated before the call, completion tokens counted from the
    /// text streamed) when the provider gave none.
    pub fn new(pricing: &Pricing, reported: Option<Usage>, estimate: Usage) -> Self {
        let (usage, estimated) = match reported {
            Some(u) => (u, false),
            None => (estimate, true),
        };
        Self {
            usage,
            estimated,
            cost: cost(pricing, &usage),
        }
    }

    /// The spend of this one request, as budgets count it.
    pub fn spend(&self) -> Spend {
        Spend {
            cost_usd: self.cost,
            tokens: self
                .usage
                .prompt_tokens
                .saturating_add(self.usage.completion_tokens),
            requests: 1,
        }
    }
}

/// Where settled spend goes: the cluster session's report outbox, or the
/// standalone totals. Implementations must be cheap and must not block for
/// long: they run on the accounting task, or inline when it is overloaded.
pub trait SpendSink: Send + Sync + 'static {
    /// Records settled spend; returns the sequence of the report it will
    /// travel in (0 when nothing is reported).
    fn record(&self, budget: &str, tenant: Option<&str>, window_start: &str, spent: &Spend) -> u64;
}

impl SpendSink for crate::cluster::Session {
    fn record(&self, budget: &str, tenant: Option<&str>, window_start: &str, spent: &Spend) -> u64 {
        self.record_usage(budget, tenant, window_start, spent)
    }
}

/// Spend is reported per budget, tenant (when the budget is per tenant) and
/// window start (RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpendKey {
    pub budget: String,
    pub tenant: Option<String>,
    pub window_start: String,
}

/// Standalone sink: spend totals per [`SpendKey`].
#[derive(Default)]
pub struct Totals {
    inner: std::sync::Mutex<std::collections::BTreeMap<SpendKey, Spend>>,
}

impl Totals {
    /// A copy of the totals so far.
    pub fn snapshot(&self) -> Vec<(SpendKey, Spend)> {
        match self.inner.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl SpendSink for Totals {
    fn record(&self, budget: &str, tenant: Option<&str>, window_start: &str, spent: &Spend) -> u64 {
        if let Ok(mut m) = self.inner.lock() {
            m.entry(SpendKey {
                budget: budget.to_owned(),
                tenant: tenant.map(str::to_owned),
                window_start: window_start.to_owned(),
            })
            .or_default()
            .add(spent);
        }
        0
    }
}

/// One finished request, as the accounting task sees it.
#[derive(Debug)]
pub struct UsageRecord {
    pub metered: Metered,
    /// The budget reservations taken for this request; settled with the
    /// metered spend.
    pub reservations: Vec<Reservation>,
    /// A call made on behalf of a request (the semantic cache's
    /// embedding), not a request: its tokens and cost count, a request
    /// does not.
    pub side_call: bool,
}

/// Counters of the accounting path, for metrics.
#[derive(Default, Debug)]
pub struct AccountingStats {
    pub settled: AtomicU64,
    /// Records settled inline because the channel was full.
    pub overflowed: AtomicU64,
    pub estimated: AtomicU64,
}

/// The request path's handle on the accounting task. Cheap to clone.
#[derive(Clone)]
pub struct Accountant {
    tx: mpsc::Sender<UsageRecord>,
    sink: Arc<dyn SpendSink>,
    stats: Arc<AccountingStats>,
}

impl std::fmt::Debug for Accountant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accountant")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Accountant {
    /// A handle and the task to spawn (`tokio::spawn(task)`), with a channel
    /// of `capacity` records.
    pub fn new(
        sink: Arc<dyn SpendSink>,
        capacity: usize,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(AccountingStats::default());
        let task = run_accounting(rx, sink.clone(), stats.clone());
        (Self { tx, sink, stats }, task)
    }

    pub fn stats(&self) -> &AccountingStats {
        &self.stats
    }

    /// Hands a finished request to accounting without waiting.
    pub fn submit(&self, record: UsageRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record))
            | Err(mpsc::error::TrySendError::Closed(record)) => {
                self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                settle(record, &*self.sink, &self.stats);
            }
        }
    }
}

fn settle(record: UsageRecord, sink: &dyn SpendSink, stats: &AccountingStats) {
    let mut spend = record.metered.spend();
    if record.side_call {
        spend.requests = 0;
    }
    if record.metered.estimated {
        stats.estimated.fetch_add(1, Ordering::Relaxed);
    }
    // Recorded for the report first, then settled under that report's
    // sequence: a new allowance arriving in between still holds the
    // reservation, and knows whether it already deducted this spend.
    for reservation in record.reservations {
        let seq = sink.record(
            reservation.budget(),
            reservation.tenant(),
            &reservation.window_start(),
            &spend,
        );
        reservation.settle(&spend, seq);
    }
    stats.settled.fetch_add(1, Ordering::Relaxed);
}

/// The accounting task: settles every record until all handles are dropped.
pub async fn run_accounting(
    mut rx: mpsc::Receiver<UsageRecord>,
    sink: Arc<dyn SpendSink>,
    stats: Arc<AccountingStats>,
) {
    while let Some(record) = rx.recv().await {
        settle(record, &*sink, &stats);
    }
}

#[cfg(test)]
mod tests;
