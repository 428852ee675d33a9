//! Topic patterns: MQTT filters with named levels.
//!
//! A pattern is an MQTT topic filter in which a level may be `{device}` or `{metric}`, e.g.
//! `fleet/{device}/telemetry` or `sensors/{device}/{metric}`. Named levels match one level
//! like `+` and capture it; `+` and `#` keep their MQTT meaning. The subscription filter is the
//! pattern with named levels replaced by `+`.

use std::fmt;

/// A pattern that is not a valid MQTT filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the topic pattern is empty")]
    Empty,
    #[error("`#` must be the last level of `{0}`")]
    HashNotLast(String),
    #[error(
        "level `{level}` of `{pattern}` mixes a wildcard with text; a level is either `+`, `#`, `{{device}}`, `{{metric}}` or plain text"
    )]
    MixedLevel { pattern: String, level: String },
    #[error("`{0}` names `{{device}}` twice")]
    DeviceTwice(String),
    #[error("`{0}` names `{{metric}}` twice")]
    MetricTwice(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    Device,
    Metric,
}

/// A parsed topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    levels: Vec<Level>,
}

/// The named levels a topic matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Captures<'t> {
    pub device: Option<&'t str>,
    pub metric: Option<&'t str>,
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Plus,
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => return Err(PatternError::HashNotLast(text.to_owned())),
                "{device}" => {
                    if levels.contains(&Level::Device) {
                        return Err(PatternError::DeviceTwice(text.to_owned()));
                    }
                    Level::Device
                }
                "{metric}" => {
                    if levels.contains(&Level::Metric) {
                        return Err(PatternError::MetricTwice(text.to_owned()));
                    }
                    Level::Metric
                }
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(PatternError::MixedLevel { pattern: text.to_owned(), level: p.to_owned() });
                }
                p => Level::Literal(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(TopicPattern { text: text.to_owned(), levels })
    }

    /// The MQTT subscription filter (named levels become `+`).
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Plus | Level::Device | Level::Metric => "+",
                Level::Hash => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether the pattern names a `{device}` level.
    pub fn has_device(&self) -> bool {
        self.levels.contains(&Level::Device)
    }

    /// Whether the pattern names a `{metric}` level.
    pub fn has_metric(&self) -> bool {
        self.levels.contains(&Level::Metric)
    }

    /// The concrete topic this pattern gives `device` (and `metric`, for a `{metric}` level),
    /// for sending what a mapping reads (record and replay). `None` when the pattern has a
    /// wildcard (the topic cannot be known) or names a level that is not given.
    pub fn render(&self, device: &str, metric: Option<&str>) -> Option<String> {
        let mut parts = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            parts.push(match level {
                Level::Literal(s) => s.as_str(),
                Level::Device => device,
                Level::Metric => metric?,
                Level::Plus | Level::Hash => return None,
            });
        }
        Some(parts.join("/"))
    }

    /// Match a concrete topic, capturing the named levels.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        let mut caps = Captures::default();
        let mut parts = topic.split('/');
        for level in &self.levels {
            if *level == Level::Hash {
                // `#` also matches the parent level itself (`a/#` matches `a`).
                return Some(caps);
            }
            let part = parts.next()?;
            match level {
                Level::Literal(s) if s != part => return None,
                Level::Device => caps.device = Some(part),
                Level::Metric => caps.metric = Some(part),
                _ => {}
            }
        }
        parts.next().is_none().then_some(caps)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_levels_capture_and_become_plus() {
        let p = TopicPattern::parse("fleet/{device}/telemetry").unwrap();
        assert_eq!(p.filter(), "fleet/+/telemetry");
        assert_eq!(
            p.matches("fleet/combine-1/telemetry"),
            Some(Captures { device: Some("combine-1"), metric: None })
        );
        assert_eq!(p.matches("fleet/combine-1/status"), None);
        assert_eq!(p.matches("fleet/combine-1/telemetry/extra"), None);
        assert_eq!(p.matches("fleet/telemetry"), None);

        let p = TopicPattern::parse("sensors/{device}/{metric}").unwrap();
        assert_eq!(
            p.matches("sensors/bin-3/level_pct"),
            Some(Captures { device: Some("bin-3"), metric: Some("level_pct") })
        );
    }

    #[test]
    fn mqtt_wildcards_keep_their_meaning() {
        let p = TopicPattern::parse("farm/+/{device}/#").unwrap();
        assert_eq!(p.filter(), "farm/+/{device}/#".replace("{device}", "+"));
        assert_eq!(
            p.matches("farm/north/pump-2").map(|c| c.device),
            Some(Some("pump-2")),
            "`#` matches the parent"
        );
        assert_eq!(p.matches("farm/north/pump-2/a/b").map(|c| c.device), Some(Some("pump-2")));
        assert_eq!(p.matches("farm/north"), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        let cases = [
            ("", PatternError::Empty),
            ("a/#/b", PatternError::HashNotLast("a/#/b".into())),
            ("a/dev+/b", PatternError::MixedLevel { pattern: "a/dev+/b".into(), level: "dev+".into() }),
            ("{device}/{device}", PatternError::DeviceTwice("{device}/{device}".into())),
            ("{metric}/x/{metric}", PatternError::MetricTwice("{metric}/x/{metric}".into())),
        ];
        for (text, err) in cases {
            assert_eq!(TopicPattern::parse(text), Err(err), "{text:?}");
        }
    }

    #[test]
    fn render_fills_the_named_levels_and_refuses_wildcards() {
        let p = TopicPattern::parse("sensors/{device}/{metric}").unwrap();
        assert_eq!(p.render("bin-3", Some("level_pct")).as_deref(), Some("sensors/bin-3/level_pct"));
        assert_eq!(p.render("bin-3", None), None);
        let rendered = p.render("bin-3", Some("t")).unwrap();
        assert_eq!(p.matches(&rendered), Some(Captures { device: Some("bin-3"), metric: Some("t") }));
        assert_eq!(TopicPattern::parse("fleet/+/{device}").unwrap().render("x", None), None);
        assert_eq!(
            TopicPattern::parse("site/weather").unwrap().render("x", None).as_deref(),
            Some("site/weather")
        );
    }
}
