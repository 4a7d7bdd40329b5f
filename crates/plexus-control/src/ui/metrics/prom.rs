//! A reader for the Prometheus text format the sidecars' `/metrics` write: one sample per line,
//! `name{label="value",...} number`; comments and lines it cannot read are skipped. Never panics
//! on any input (property-tested).

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`, … suffixes as written).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// Value (`+Inf`, `-Inf` and `NaN` as Rust reads them).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text` that reads cleanly.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels up to the closing `}`; the text after it.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_owned();
        text = text[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.push((key, value));
        text = &text[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_counters_histograms_and_escapes() {
        let text = "# HELP x y\n# TYPE a counter\n\
            a_total{direction=\"outbound\",upstream=\"web\"} 12\n\
            b_bucket{le=\"+Inf\"} 3\n\
            c{path=\"a\\\"b\\\\c\\nd\"} 1.5 1700000000\n\
            bare 7\n\
            broken{x=\"1\" 2\n# EOF\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0].label("upstream"), Some("web"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].label("le"), Some("+Inf"));
        assert_eq!(samples[2].label("path"), Some("a\"b\\c\nd"));
        assert_eq!(samples[2].value, 1.5);
        assert_eq!(samples[3].name, "bare");
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn reads_back_what_it_is_given(
            name in "[a-z_]{1,12}",
            labels in proptest::collection::vec(("[a-z]{1,6}", "[ -~]{0,8}"), 0..4),
            value in -1e9f64..1e9,
        ) {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let line = format!("{name}{{{}}} {value}", body.join(","));
            let parsed = parse(&line);
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(&parsed[0].name, &name);
            prop_assert_eq!(&parsed[0].labels, &labels);
            prop_assert_eq!(parsed[0].value, value);
        }
    }
}
