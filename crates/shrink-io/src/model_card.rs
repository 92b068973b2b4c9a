//! The model-card keys of a Hugging Face README.md (its YAML front matter) that llama.cpp's
//! converter turns into `general.*` GGUF metadata (gguf-py's `Metadata`: `name`,
//! `organization`, `finetune`, `basename`, `size_label`, `license`, `language(s)`), read and
//! written.
//!
//! Only the front matter's flat keys are read: `key: value` scalars and lists written inline
//! (`[a, b]`) or as `- item` lines. Anything else in the card is ignored.

use std::path::Path;

/// One model-card value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardValue {
    /// A scalar.
    Text(String),
    /// A list of scalars.
    List(Vec<String>),
}

/// The keys shrink carries between GGUF and model cards, in llama.cpp's `general.*` order:
/// (model-card key, GGUF key).
pub const CARD_KEYS: &[(&str, &str)] = &[
    ("name", "general.name"),
    ("organization", "general.organization"),
    ("finetune", "general.finetune"),
    ("basename", "general.basename"),
    ("size_label", "general.size_label"),
    ("license", "general.license"),
    ("language", "general.languages"),
];

fn unquote(s: &str) -> String {
    let s = s.trim();
    let q = s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')));
    if q {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// The front-matter keys of `dir`/README.md (empty when there is no card or no front matter).
pub fn read(dir: &Path) -> Vec<(String, CardValue)> {
    let Ok(text) = std::fs::read_to_string(dir.join("README.md")) else {
        return Vec::new();
    };
    parse(&text)
}

/// The flat keys of a card's YAML front matter.
pub fn parse(text: &str) -> Vec<(String, CardValue)> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("---") {
        return Vec::new();
    }
    let mut out: Vec<(String, CardValue)> = Vec::new();
    for line in lines {
        if line.trim() == "---" {
            break;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ") {
            if line.starts_with(' ') || line.starts_with('-') {
                if let Some((_, CardValue::List(l))) = out.last_mut() {
                    l.push(unquote(item));
                }
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let value = if v.is_empty() {
            CardValue::List(Vec::new())
        } else if let Some(inner) = v.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            CardValue::List(
                inner
                    .split(',')
                    .map(unquote)
                    .filter(|x| !x.is_empty())
                    .collect(),
            )
        } else {
            CardValue::Text(unquote(v))
        };
        out.push((k.trim().to_string(), value));
    }
    out
}

/// A README.md holding `keys` as YAML front matter.
pub fn render(keys: &[(String, CardValue)]) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut s = String::from("---\n");
    for (k, v) in keys {
        match v {
            CardValue::Text(t) => s.push_str(&format!("{k}: {}\n", q(t))),
            CardValue::List(items) => {
                s.push_str(&format!("{k}:\n"));
                for i in items {
                    s.push_str(&format!("- {}\n", q(i)));
                }
            }
        }
    }
    s.push_str("---\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_round_trips_and_reads_hub_cards() {
        let keys = vec![
            ("name".to_string(), CardValue::Text("Smollm2 135M".into())),
            ("license".to_string(), CardValue::Text("apache-2.0".into())),
            (
                "language".to_string(),
                CardValue::List(vec!["en".into(), "fr".into()]),
            ),
        ];
        assert_eq!(parse(&render(&keys)), keys);
        let hub = "---\nlibrary_name: transformers\nlicense: apache-2.0\nlanguage: [en]\ntags:\n  - a\n---\n# Title\nname: not front matter\n";
        let got = parse(hub);
        assert_eq!(
            got[1],
            ("license".into(), CardValue::Text("apache-2.0".into()))
        );
        assert_eq!(
            got[2],
            ("language".into(), CardValue::List(vec!["en".into()]))
        );
        assert_eq!(got[3], ("tags".into(), CardValue::List(vec!["a".into()])));
        assert_eq!(got.len(), 4);
        assert!(parse("# no front matter\n").is_empty());
    }
}
