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
