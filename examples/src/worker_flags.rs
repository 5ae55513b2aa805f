//! Flags that `jsonl-worker` and `lambda-bridge` share, with the same names and meanings.

/// `--filter-pattern JSON|@FILE`: the pattern itself, or the content of FILE. Whether it is
/// a valid pattern is checked by the consumer's `build`, which names the JSON path of what
/// is wrong.
pub fn read_filter_pattern(text: &str) -> Result<String, String> {
    match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the filter pattern file {path:?}: {e}")),
        None => Ok(text.to_owned()),
    }
}

/// `--idle-backoff MIN,MAX` (e.g. `50ms,1s`): the pauses between polls of an idle shard,
/// `ConsumerBuilder::with_idle_backoff`. Whether the pair is usable (not zero, MIN <= MAX)
/// is checked by the consumer's `build`, which names the setting.
pub fn parse_idle_backoff(
    text: &str,
) -> Result<(std::time::Duration, std::time::Duration), String> {
    let (min, max) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?}: expected MIN,MAX (e.g. 50ms,1s)"))?;
    let duration = |part: &str| {
        humantime::parse_duration(part.trim()).map_err(|e| format!("{part:?} in {text:?}: {e}"))
    };
    Ok((duration(min)?, duration(max)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn idle_backoff_is_a_pair_of_durations() {
        assert_eq!(
            parse_idle_backoff("50ms, 2s"),
            Ok((Duration::from_millis(50), Duration::from_secs(2)))
        );
        assert!(parse_idle_backoff("1s").unwrap_err().contains("MIN,MAX"));
        assert!(
            parse_idle_backoff("1s,soon")
                .unwrap_err()
                .contains("\"soon\"")
        );
    }
}
