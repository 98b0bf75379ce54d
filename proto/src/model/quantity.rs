//! Quantities people type: memory sizes (`64Mi`, `1G`, `512`) and fractional CPUs.

/// Parses a memory size: plain bytes, or a number with a binary (`Ki`, `Mi`,
/// `Gi`, `Ti`) or decimal (`k`/`K`, `M`, `G`, `T`) suffix; a trailing `B` is allowed.
pub fn parse_memory(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix('B').unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    let bytes = f * mult as f64;
    (f.is_finite() && f >= 0.0 && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// Formats bytes the way `parse_memory` reads them, exactly where possible.
pub fn format_memory(bytes: u64) -> String {
    for (unit, size) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Parses fractional CPUs (`0.5`, `2`) into millicpus; `None` unless finite and >= 0.
pub fn parse_cpus(s: &str) -> Option<f64> {
    let f: f64 = s.trim().parse().ok()?;
    (f.is_finite() && f >= 0.0).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("64Mi"), Some(64 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_memory("512"), Some(512));
        assert_eq!(parse_memory("2KiB"), Some(2048));
        assert_eq!(parse_memory("-1"), None);
        assert_eq!(parse_memory("12Zi"), None);
        assert_eq!(parse_memory("Mi"), None);
        assert_eq!(parse_memory("99999999999999Ti"), None);
        assert_eq!(format_memory(64 << 20), "64Mi");
        assert_eq!(format_memory(1000), "1000");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Some(0.5));
        assert_eq!(parse_cpus("-1"), None);
        assert_eq!(parse_cpus("NaN"), None);
        assert_eq!(parse_cpus("inf"), None);
    }
}
