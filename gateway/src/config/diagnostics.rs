//! Turning TOML into a config struct while collecting *every* problem, each with its file,
//! line, column and key path.
//!
//! serde stops at the first error. To report them all at once, [`deserialize_all`] records the
//! error, overwrites the offending entry with spaces (so every other byte keeps its line and
//! column), and deserializes again, until the text deserializes or an error cannot be located.
//! The semantic checks of `validate` then run on the result and add their own problems,
//! located through the same [`DocIndex`].

use serde::de::DeserializeOwned;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml_edit::{Document, Item, Table, Value};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file, if it could be located.
    pub location: Option<Location>,
    /// The key path, e.g. `store.windows[1]`; empty for the whole file.
    pub path: String,
    pub message: String,
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    fn of(text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location { line, column: before[line_start..].chars().count() + 1 }
    }
}

/// Everything wrong with a config file, printed the way a person fixes it: one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let file = self.file.display();
        write!(f, "{file} has {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            match p.location {
                Some(l) => write!(f, "\n  --> {file}:{}:{}  ", l.line, l.column)?,
                None => write!(f, "\n  --> {file}  ")?,
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// A segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// One key, table or array element of the document, with the spans that locate it.
#[derive(Debug)]
struct Entry {
    path: Vec<Seg>,
    /// The key as written (for a table: in its header).
    key: Option<Range<usize>>,
    /// The value, or the table header.
    value: Option<Range<usize>>,
    /// What to overwrite to make the document forget this entry.
    erase: Vec<Range<usize>>,
    /// Inside an inline table: a following comma must go too.
    inline: bool,
}

/// Spans of every entry of a parsed document, by path.
#[derive(Debug, Default)]
pub(crate) struct DocIndex {
    entries: Vec<Entry>,
}

impl DocIndex {
    pub(crate) fn build(doc: &Document<String>) -> Self {
        let mut index = DocIndex::default();
        index.table(doc.as_table(), &mut Vec::new());
        index
    }

    /// Walk a table; returns the ranges that erase all of it.
    fn table(&mut self, t: &Table, path: &mut Vec<Seg>) -> Vec<Range<usize>> {
        let mut erase: Vec<Range<usize>> = t.span().into_iter().collect();
        for (k, _) in t.iter() {
            let Some((key, item)) = t.get_key_value(k) else { continue };
            path.push(Seg::Key(k.to_owned()));
            erase.extend(self.item(key.span(), item, path));
            path.pop();
        }
        erase
    }

    /// Record an entry whose erase ranges are filled in once its contents are walked.
    fn open_entry(&mut self, path: &[Seg], key: Option<Range<usize>>, value: Option<Range<usize>>) -> usize {
        self.entries.push(Entry { path: path.to_vec(), key, value, erase: Vec::new(), inline: false });
        self.entries.len() - 1
    }

    fn item(&mut self, key: Option<Range<usize>>, item: &Item, path: &mut Vec<Seg>) -> Vec<Range<usize>> {
        match item {
            Item::None => Vec::new(),
            Item::Value(v) => self.key_value(key, v, path, false),
            Item::Table(t) => {
                let at = self.open_entry(path, key, t.span());
                let erase = self.table(t, path);
                self.entries[at].erase = erase.clone();
                erase
            }
            Item::ArrayOfTables(a) => {
                let at = self.open_entry(path, key, a.span());
                let mut all = Vec::new();
                for (i, t) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    let el = self.open_entry(path, None, t.span());
                    let erase = self.table(t, path);
                    self.entries[el].erase = erase.clone();
                    all.extend(erase);
                    path.pop();
                }
                self.entries[at].erase = all.clone();
                all
            }
        }
    }

    fn key_value(
        &mut self,
        key: Option<Range<usize>>,
        v: &Value,
        path: &mut Vec<Seg>,
        inline: bool,
    ) -> Vec<Range<usize>> {
        let value = v.span();
        let erase: Vec<Range<usize>> = match (&key, &value) {
            (Some(k), Some(v)) => std::iter::once(k.start..v.end).collect(),
            _ => Vec::new(),
        };
        self.entries.push(Entry { path: path.clone(), key, value, erase: erase.clone(), inline });
        match v {
            Value::InlineTable(t) => self.inline_table(t, path),
            Value::Array(a) => {
                for (i, el) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    self.open_entry(path, None, el.span());
                    if let Value::InlineTable(t) = el {
                        self.inline_table(t, path);
                    }
                    path.pop();
                }
            }
            _ => {}
        }
        erase
    }

    fn inline_table(&mut self, t: &toml_edit::InlineTable, path: &mut Vec<Seg>) {
        for (k, _) in t.iter() {
            let Some((key, Item::Value(inner))) = t.get_key_value(k) else { continue };
            path.push(Seg::Key(k.to_owned()));
            self.key_value(key.span(), inner, path, true);
            path.pop();
        }
    }

    /// The entry an error span points at: a key exactly, else the innermost erasable entry
    /// whose value contains the span.
    fn at(&self, span: &Range<usize>) -> Option<&Entry> {
        if let Some(e) = self.entries.iter().find(|e| e.key.as_ref() == Some(span)) {
            return Some(e);
        }
        self.entries
            .iter()
            .filter(|e| !e.erase.is_empty())
            .filter(|e| e.value.as_ref().is_some_and(|v| v.start <= span.start && span.end <= v.end))
            .min_by_key(|e| e.value.as_ref().map_or(usize::MAX, |v| v.end - v.start))
    }

    /// Where a rendered path (as `validate` names it) is written, or its nearest ancestor.
    pub(crate) fn locate(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| render(&e.path) == p) {
                // A semantic problem is about the value; point at it.
                return e.value.as_ref().or(e.key.as_ref()).map(|r| r.start);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Overwrite `range` with spaces, keeping newlines, so every other byte keeps its position.
fn blank(text: &mut String, range: &Range<usize>) {
    let blanked: String =
        text[range.clone()].chars().map(|c| if c == '\n' || c == '\r' { c } else { ' ' }).collect();
    text.replace_range(range.clone(), &blanked);
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (c, strsim::damerau_levenshtein(word, c)))
        .filter(|&(c, d)| d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|&(_, d)| d)
        .map(|(c, _)| c)
}

/// The backquoted words of a serde message: the unknown key, then the expected ones.
fn backquoted(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// A serde message, rewritten for a farmer: unknown keys get a suggestion.
fn explain(message: &str, path: &[Seg]) -> (String, String) {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let words = backquoted(rest);
        if let Some((unknown, expected)) = words.split_first() {
            let parent = &path[..path.len().saturating_sub(1)];
            let place = if parent.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in {}", render(parent))
            };
            let mut m = format!("unknown key `{unknown}` {place}");
            match suggest(unknown, expected.iter().copied()) {
                Some(s) => m.push_str(&format!(" (did you mean `{s}`?)")),
                None if !expected.is_empty() => m.push_str(&format!(
                    "; valid keys here: {}",
                    expected.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )),
                None => m.push_str("; this section takes no keys in this version"),
            }
            return (String::new(), m);
        }
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return (render(path), format!("required key {rest} is missing"));
    }
    (render(path), message.to_owned())
}

/// Deserialize `text`, collecting every structural problem (syntax, unknown keys, wrong types,
/// bad values). Returns the value if, after erasing the entries in error, it deserializes.
pub(crate) fn deserialize_all<T: DeserializeOwned>(src: &str) -> (Option<T>, Vec<Problem>, Option<DocIndex>) {
    // The common case, a valid file, needs no index: build it only to explain problems. (For
    // a site with a thousand Modbus devices the index and the editable document cost more
    // memory than the whole gateway needs to run.)
    if let Ok(value) = toml::from_str::<T>(src) {
        return (Some(value), Vec::new(), None);
    }
    let doc = match Document::parse(src.to_owned()) {
        Ok(doc) => doc,
        Err(e) => {
            let location = e.span().map(|s| Location::of(src, s.start));
            let message = e.message().trim().to_owned();
            return (
                None,
                vec![Problem {
                    location,
                    path: String::new(),
                    message: format!("not valid TOML: {message}"),
                }],
                None,
            );
        }
    };
    let index = DocIndex::build(&doc);
    let mut text = src.to_owned();
    let mut problems = Vec::new();
    // Keys erased, and the keys suggested for them: a "missing" error for one of those is a
    // consequence of a problem already reported (a typo of a required key), not a new one.
    let mut explained: Vec<String> = Vec::new();
    // Each round erases one entry, so the number of entries bounds the rounds.
    for _ in 0..=index.entries.len() {
        let err = match toml::from_str::<T>(&text) {
            Ok(value) => return (Some(value), problems, Some(index)),
            Err(err) => err,
        };
        let message = err.message().to_owned();
        let span = err.span();
        if message.starts_with("missing field") {
            let field = backquoted(&message).first().map(|f| (*f).to_owned()).unwrap_or_default();
            if !explained.contains(&field) {
                // The span is the table that lacks the key.
                let table =
                    span.as_ref().and_then(|s| index.entries.iter().find(|e| e.value.as_ref() == Some(s)));
                let (path, message) = explain(&message, table.map_or(&[][..], |e| &e.path));
                problems.push(Problem { location: span.map(|s| Location::of(src, s.start)), path, message });
            }
            break;
        }
        let entry = span.as_ref().and_then(|s| index.at(s));
        let (path, message) = explain(&message, entry.map_or(&[][..], |e| &e.path));
        if let Some(s) = message.split("(did you mean `").nth(1).and_then(|r| r.split('`').next()) {
            explained.push(s.to_owned());
        }
        problems.push(Problem { location: span.map(|s| Location::of(src, s.start)), path, message });
        let Some(entry) = entry else { break };
        if entry.erase.is_empty() {
            break;
        }
        if let Some(Seg::Key(k)) = entry.path.last() {
            explained.push(k.clone());
        }
        for r in &entry.erase {
            blank(&mut text, r);
        }
        if entry.inline {
            // Take the separating comma too, so the inline table stays valid.
            let end = entry.erase.last().map_or(0, |r| r.end);
            if let Some(off) = text[end..].find(|c: char| !c.is_whitespace())
                && text[end + off..].starts_with(',')
            {
                blank(&mut text, &(end + off..end + off + 1));
            }
        }
    }
    (None, problems, Some(index))
}

/// The index of `src`, to locate problems found after deserialization succeeded; `None` if
/// the text does not parse (it did, to get that far).
pub(crate) fn index(src: &str) -> Option<DocIndex> {
    Document::parse(src.to_owned()).ok().map(|doc| DocIndex::build(&doc))
}

/// Read a config file's text, with a problem (not a panic) when it cannot be read.
pub(crate) fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_owned(),
        problems: vec![Problem {
            location: None,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })
}

/// Locate a semantic problem found by `validate` at its path.
pub(crate) fn locate(src: &str, index: Option<&DocIndex>, path: String, message: String) -> Problem {
    let location = index.and_then(|i| i.locate(&path)).map(|off| Location::of(src, off));
    Problem { location, path, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_not_strangers() {
        let keys = ["address", "unit_id", "poll_interval"];
        assert_eq!(suggest("adress", keys), Some("address"));
        assert_eq!(suggest("pol_interval", keys), Some("poll_interval"));
        assert_eq!(suggest("unitid", keys), Some("unit_id"));
        assert_eq!(suggest("colour", keys), None);
    }

    #[test]
    fn locations_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        let off = text.find('=').unwrap();
        assert_eq!(Location::of(text, off), Location { line: 1, column: 3 });
        let off = text.rfind('=').unwrap();
        assert_eq!(Location::of(text, off), Location { line: 2, column: 4 });
    }
}
