//! Sizes and durations for people, the same in zibd's and zibctl's output.

/// Bytes in binary units with one decimal: `0 B`, `512 B`, `1.5 KiB`, `3.0 GiB`. A value that
/// would print as `1024.0` of a unit is shown as `1.0` of the next (1 MiB - 1 is `1.0 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A rate in bytes per second: `50.0 MiB/s`.
pub fn human_rate(bytes_per_sec: u64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec))
}

/// Percentage of `part` in `total`, floored, capped at 100 (estimates can be exceeded).
pub fn percent(part: u64, total: u64) -> u64 {
    if total == 0 { 100 } else { (u128::from(part) * 100 / u128::from(total)).min(100) as u64 }
}

/// A bar of `cells` cells and the percentage: `[###-------]  30%`.
pub fn bar(part: u64, total: u64, cells: usize) -> String {
    let pct = percent(part, total);
    let filled = (pct as usize * cells) / 100;
    format!("[{}{}] {pct:>3}%", "#".repeat(filled), "-".repeat(cells - filled))
}

/// A count with its noun: `1 chunk`, `0 chunks`, `3 PUTs`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A duration, at most two units, rounded down: `45s`, `2m 23s`, `3h`, `3h 20m`, `2d 4h`.
pub fn human_duration(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit} {small}{small_unit}")
        }
    };
    match secs {
        s if s < MIN => format!("{s}s"),
        s if s < HOUR => two(s / MIN, "m", s % MIN, "s"),
        s if s < DAY => two(s / HOUR, "h", s % HOUR / MIN, "m"),
        s => two(s / DAY, "d", s % DAY / HOUR, "h"),
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_take_the_singular_only_for_one() {
        assert_eq!(count(0, "chunk", "chunks"), "0 chunks");
        assert_eq!(count(1, "chunk", "chunks"), "1 chunk");
        assert_eq!(count(2, "PUT", "PUTs"), "2 PUTs");
    }

    use super::*;

    #[test]
    fn a_bar_fills_by_percent_and_stops_at_full() {
        assert_eq!(bar(0, 10, 10), "[----------]   0%");
        assert_eq!(bar(3, 10, 10), "[###-------]  30%");
        assert_eq!(bar(15, 10, 4), "[####] 100%", "an estimate exceeded");
        assert_eq!(bar(0, 0, 4), "[####] 100%");
        assert_eq!(human_rate(3 << 20), "3.0 MiB/s");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_bytes(5_000_000_000), "4.7 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    /// The boundary where zibd's and zibctl's copies disagreed ("1024.0 KiB" vs "1.0 MiB").
    #[test]
    fn one_mib_less_one_byte_is_one_mib() {
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes(1 << 20), "1.0 MiB");
        assert_eq!(human_bytes((1 << 20) - 52), "1023.9 KiB");
        assert_eq!(human_bytes((1 << 30) - 1), "1.0 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(143), "2m 23s");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(3 * 3600 + 59), "3h");
        assert_eq!(human_duration(3 * 3600 + 20 * 60 + 59), "3h 20m");
        assert_eq!(human_duration(86_400), "1d");
        assert_eq!(human_duration(2 * 86_400 + 5), "2d");
        assert_eq!(human_duration(2 * 86_400 + 4 * 3600 + 7), "2d 4h");
    }
}
