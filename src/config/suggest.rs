//! "Did you mean": the known name closest to a misspelt one, for unknown keys and names.
//!
//! A restricted Damerau–Levenshtein distance (a swap of two neighbours counts once, so
//! `client_secert` is one edit from `client_secret`), case-insensitive. It only suggests; it
//! never accepts a misspelling.

/// The candidate `input` most likely meant, if one is close: a few edits away (about one per
/// three characters), or a name that `input` abbreviates (`prod` → `production`); else the
/// one name that ends in the words of `input` (`prefix` → `key_prefix`).
pub(super) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = input.to_lowercase();
    let len = input.chars().count();
    let candidates: Vec<&str> = candidates.into_iter().collect();
    candidates
        .iter()
        .filter_map(|&c| {
            let d = distance(&input, &c.to_lowercase());
            let abbreviates = len >= 3 && c.to_lowercase().starts_with(&input);
            (d <= (len / 3).max(1) || abbreviates).then_some((d, c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
        .or_else(|| last_words(&input, &candidates))
}

/// The one candidate whose last `_`-separated words `input` is. None when several are: a
/// `timeout` in `[[upstream]]` is neither `connect_timeout` nor `request_timeout` for sure
/// (it belongs in `[upstream.auth]`).
fn last_words<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if input.chars().count() < 3 {
        return None;
    }
    let suffix = format!("_{input}");
    let mut ending = candidates
        .iter()
        .filter(|c| c.to_lowercase().ends_with(&suffix));
    match (ending.next(), ending.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`.
pub(super) fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows of the dynamic-programming table: two back (for swaps), one back, this one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (previous[j] + 1)
                .min(row[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, row);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(
            distance("client_secert", "client_secret"),
            1,
            "a swap is one edit"
        );
        assert_eq!(distance("quantos", "quantoz"), 1);
        assert_eq!(distance("formt", "format"), 1);
    }

    #[test]
    fn suggestions_are_close_or_abbreviated_and_never_wild() {
        let keys = ["client_id", "client_secret", "client_auth", "scope"];
        assert_eq!(did_you_mean("client_secert", keys), Some("client_secret"));
        assert_eq!(did_you_mean("Client_Secret", keys), Some("client_secret"));
        assert_eq!(did_you_mean("client-id", keys), Some("client_id"));
        assert_eq!(did_you_mean("scop", keys), Some("scope"));
        assert_eq!(did_you_mean("password", keys), None);
        assert_eq!(did_you_mean("x", keys), None);
        let presets = ["nuvy-nexus", "nuvy", "quantoz", "nexudus", "nexushub"];
        assert_eq!(did_you_mean("quantos", presets), Some("quantoz"));
        assert_eq!(did_you_mean("nexus", presets), Some("nexushub"));
        assert_eq!(did_you_mean("azure", presets), None);
        assert_eq!(
            did_you_mean("prod", ["qa", "production"]),
            Some("production")
        );
        assert_eq!(did_you_mean("retry", ["retry_on"]), Some("retry_on"));
    }

    #[test]
    fn a_names_last_words_suggest_it_when_no_other_name_ends_in_them() {
        let keys = ["url", "key_prefix", "timeout"];
        assert_eq!(did_you_mean("prefix", keys), Some("key_prefix"));
        assert_eq!(did_you_mean("Prefix", keys), Some("key_prefix"));
        assert_eq!(did_you_mean("fix", keys), None, "a word, not any tail");
        let upstream = ["connect_timeout", "request_timeout", "max_replay_body"];
        assert_eq!(did_you_mean("timeout", upstream), None, "two end so");
        assert_eq!(
            did_you_mean("replay_body", upstream),
            Some("max_replay_body")
        );
        assert_eq!(did_you_mean("id", ["client_id"]), None, "too short to tell");
    }
}
