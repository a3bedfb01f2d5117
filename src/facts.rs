//! Facts a scenario records with `fact KEY VALUE` (guest library) into `/out/results.env`:
//! one `KEY=VALUE` per line. Keys are `[A-Za-z0-9_.-]+`, unique; values run to the end of the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

#[derive(Debug, Clone, Default)]
pub struct Facts {
    source: PathBuf,
    map: BTreeMap<String, String>,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Facts {
    /// Reads the facts file; a missing file is an empty set (the scenario recorded nothing).
    pub fn load(path: &Path) -> Result<Facts> {
        match std::fs::read_to_string(path) {
            Ok(text) => Facts::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Facts { source: path.to_path_buf(), map: BTreeMap::new() })
            }
            Err(e) => {
                Err(LabError::Io { what: "cannot read the scenario's facts", path: path.to_path_buf(), source: e })
            }
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Facts> {
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |reason: &str| LabError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                reason: reason.to_string(),
            };
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| bad("not KEY=VALUE"))?;
            if !valid_key(k) {
                return Err(bad("key has characters outside [A-Za-z0-9_.-]"));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad(&format!("key {k} recorded twice")));
            }
        }
        Ok(Facts { source: path.to_path_buf(), map })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|s| s.as_str())
    }

    /// The value of `key`; panics (this is for tests) naming the file when it is absent.
    #[track_caller]
    pub fn expect(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!(
                "lab fact {key} was not recorded (facts file {}; recorded: {})",
                self.source.display(),
                self.keys()
            ),
        }
    }

    /// `key` parsed as an integer; panics naming the file when absent or not a number.
    #[track_caller]
    pub fn expect_i64(&self, key: &str) -> i64 {
        let v = self.expect(key);
        v.parse().unwrap_or_else(|_| panic!("lab fact {key}={v:?} is not an integer ({})", self.source.display()))
    }

    /// All facts under `prefix.` with the prefix removed.
    pub fn section(&self, prefix: &str) -> BTreeMap<&str, &str> {
        let p = format!("{prefix}.");
        self.map.iter().filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k, v.as_str()))).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn keys(&self) -> String {
        if self.map.is_empty() {
            "none".into()
        } else {
            self.map.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

impl fmt::Display for Facts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.map {
            writeln!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sections() {
        let f = Facts::parse(Path::new("x"), "a.b=1\na.c=two words=x\n\nd=\n").unwrap();
        assert_eq!(f.get("a.c"), Some("two words=x"));
        assert_eq!(f.get("d"), Some(""));
        assert_eq!(f.section("a").len(), 2);
        assert_eq!(f.expect_i64("a.b"), 1);
    }

    #[test]
    fn rejects_duplicates_and_garbage() {
        assert!(Facts::parse(Path::new("x"), "a=1\na=2\n").is_err());
        assert!(Facts::parse(Path::new("x"), "no equals sign\n").is_err());
        assert!(Facts::parse(Path::new("x"), "bad key=1\n").is_err());
    }

    #[test]
    #[should_panic(expected = "was not recorded")]
    fn expect_names_the_missing_key() {
        Facts::parse(Path::new("x"), "a=1\n").unwrap().expect("b");
    }
}
