//! The caller's deadline: a gRPC client sends how long it will wait (`grpc-timeout`), and a
//! call that would wait longer (a query over many files, a command waiting for a device's
//! acknowledgement) gives up in time with `DEADLINE_EXCEEDED` and says what it was waiting for.
//!
//! The answer goes out a little before the deadline (a tenth of the budget, at most 250 ms),
//! so that it reaches the caller, over a busy machine and network, as our answer rather than
//! as the caller's own transport cutting the call.

use std::future::Future;
use std::time::Duration;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// The `grpc-timeout` of a call, if it has a valid one.
pub fn budget(metadata: &MetadataMap) -> Option<Duration> {
    parse(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long the work may take within `budget`.
fn allowance(budget: Duration) -> Duration {
    budget - (budget / 10).min(Duration::from_millis(250))
}

/// Run `work`, or answer `DEADLINE_EXCEEDED` (saying `what` was not finished, and `after`,
/// what the caller should know) when the caller's deadline comes first. Dropping `work`
/// stops it.
pub async fn within<T>(
    budget: Option<Duration>,
    what: &str,
    after: &str,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(budget) = budget else { return work.await };
    match tokio::time::timeout(allowance(budget), work).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{what} did not finish within the caller's deadline of {budget:?}{after}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "5x", "-5m", "5 m"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_the_deadline_is_stopped_with_a_reason() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        };
        let started = tokio::time::Instant::now();
        let err = within(Some(Duration::from_millis(500)), "the query", "", slow).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(err.message(), "the query did not finish within the caller's deadline of 500ms");
        assert_eq!(started.elapsed(), Duration::from_millis(450), "answered before the deadline");
        let quick = within(Some(Duration::from_millis(500)), "x", "", async { Ok(7) }).await.unwrap();
        assert_eq!(quick, 7);
    }
}
