//! Reading the Prometheus text exposition of our /metrics endpoints (tests and benchmarks).

/// The value of the unlabelled sample `name`, if the text has it.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of `name`, whatever its labels; 0 when there is none.
pub fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\nx_total_extra 9\n\
                        y_total{error=\"a\"} 1\ny_total{error=\"b\"} 2\n# EOF\n";

    #[test]
    fn samples_are_read_by_exact_name_and_series_summed() {
        assert_eq!(sample(TEXT, "x_total"), Some(3.0));
        assert_eq!(sample(TEXT, "x"), None);
        assert_eq!(
            sample(TEXT, "y_total"),
            None,
            "labelled: not a plain sample"
        );
        assert_eq!(sum_of(TEXT, "y_total"), 3.0);
        assert_eq!(sum_of(TEXT, "x_total"), 3.0);
        assert_eq!(sum_of(TEXT, "z_total"), 0.0);
    }
}
