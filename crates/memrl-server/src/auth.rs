//! API keys: bearer tokens scoped to namespaces.
//!
//! A key file (or the `MEMRL_API_KEYS` variable) holds one key per line: the key, whitespace,
//! then its scope: `*` (every namespace, the metrics and the namespace list) or a comma-separated
//! list of namespaces. `#` starts a comment. A key is either the token itself (at least 16
//! characters of `A-Z a-z 0-9 . _ ~ + / = -`, as base64 and hex tokens are) or `sha256:` and the
//! hex digest of the token, so the file need not hold the secret; in the variable, `;` may
//! separate entries:
//!
//! ```text
//! # fleet A reads and writes its own memories only
//! 3c1e9a0d6f2b4e8a9c7d5b3a1f0e2d4c  fleet-a
//! sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  fleet-b,shared
//! k7Jq2vX9mNc4Lp8Rt5Wz  *
//! ```
//!
//! Tokens are compared as SHA-256 digests, in constant time, against every key (no early exit),
//! so neither the time of a refusal nor its message says anything about the keys. No error and
//! no log line ever contains a token: keys are named by their line.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::namespaces::validate_name;

/// The shortest token accepted in a key file.
pub const MIN_KEY_LEN: usize = 16;

/// What a key may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace, the namespace list, the metrics.
    All,
    /// These namespaces only.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// Whether the key may read and write `namespace`.
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(names) => names.contains(namespace),
        }
    }

    /// The one namespace of a key scoped to exactly one (a sensible default for MCP clients).
    pub fn only_namespace(&self) -> Option<&str> {
        match self {
            Scope::Namespaces(names) if names.len() == 1 => names.iter().next().map(String::as_str),
            _ => None,
        }
    }
}

/// A problem in a key file, naming its source and line (never the key).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {problem}")]
pub struct KeyError {
    source_name: String,
    line: usize,
    problem: String,
}

struct Key {
    digest: [u8; 32],
    scope: Scope,
}

/// The server's API keys.
pub struct Keys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digests: they are as good as the tokens for an offline guess.
        write!(f, "Keys({} keys)", self.keys.len())
    }
}

impl Keys {
    /// Parses a key file's text; `source_name` names it in errors. At least one key.
    pub fn parse(text: &str, source_name: &str) -> Result<Keys, KeyError> {
        let mut keys = Vec::new();
        let error = |line: usize, problem: String| KeyError {
            source_name: source_name.to_string(),
            line,
            problem,
        };
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(token), Some(scope), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(error(
                    line,
                    "expected a key and its scope (`*` or namespaces separated by commas), separated by whitespace".into(),
                ));
            };
            let digest = match token.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex).ok_or_else(|| {
                    error(
                        line,
                        "a `sha256:` key needs 64 hexadecimal digits after the prefix".into(),
                    )
                })?,
                None => {
                    if token.len() < MIN_KEY_LEN || !token.bytes().all(is_key_byte) {
                        return Err(error(
                            line,
                            format!("a key must be at least {MIN_KEY_LEN} characters of A-Z a-z 0-9 . _ ~ + / = - (the key is not shown)"),
                        ));
                    }
                    digest(token)
                }
            };
            let scope = if scope == "*" {
                Scope::All
            } else {
                let mut names = BTreeSet::new();
                for name in scope.split(',') {
                    validate_name(name).map_err(|e| error(line, e))?;
                    names.insert(name.to_string());
                }
                Scope::Namespaces(names)
            };
            if keys.iter().any(|k: &Key| k.digest == digest) {
                return Err(error(line, "the same key appears twice".into()));
            }
            keys.push(Key { digest, scope });
        }
        if keys.is_empty() {
            return Err(error(0, "no key".into()));
        }
        Ok(Keys { keys })
    }

    /// Parses the `MEMRL_API_KEYS` variable: a key file's lines, or entries separated by `;`.
    pub fn parse_env(value: &str) -> Result<Keys, KeyError> {
        Keys::parse(&value.replace(';', "\n"), "MEMRL_API_KEYS")
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, for parsed keys).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The scope of the key `token` is, if it is one. Takes the same time whichever key matches,
    /// or none.
    pub fn authenticate(&self, token: &str) -> Option<&Scope> {
        let presented = digest(token);
        let mut found: Option<&Scope> = None;
        for key in &self.keys {
            let matched: bool = key.digest.ct_eq(&presented).into();
            // Keys are distinct, so at most one matches; no branch depends on which.
            found = if matched { Some(&key.scope) } else { found };
        }
        found
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_~+/=".contains(&b)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_authenticate() {
        let hashed = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"
        let text = format!(
            "# comment\nabcdefghijklmnop  a,b\n{hashed} c # trailing\n\nqrstuvwxyz012345 *\n"
        );
        let keys = Keys::parse(&text, "keys.txt").unwrap();
        assert_eq!(keys.len(), 3);
        let scope = keys.authenticate("abcdefghijklmnop").unwrap();
        assert!(scope.allows("a") && scope.allows("b") && !scope.allows("c"));
        assert_eq!(
            keys.authenticate("test").unwrap().only_namespace(),
            Some("c")
        );
        assert_eq!(keys.authenticate("qrstuvwxyz012345"), Some(&Scope::All));
        assert_eq!(keys.authenticate("abcdefghijklmno"), None);
        assert_eq!(keys.authenticate(""), None);
        // The environment's form.
        let env = Keys::parse_env("abcdefghijklmnop a; qrstuvwxyz012345 *").unwrap();
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn bad_key_files_name_the_line_and_never_the_key() {
        for (text, want) in [
            ("short a", "at least 16"),
            ("abcdefghijklmnop\u{e9} a", "at least 16"),
            ("abcdefghijklmnop", "expected a key and its scope"),
            ("abcdefghijklmnop a b", "expected a key and its scope"),
            ("abcdefghijklmnop ../etc", "namespace"),
            ("abcdefghijklmnop .hidden", "namespace"),
            ("sha256:abc a", "64 hexadecimal"),
            ("abcdefghijklmnop a\nabcdefghijklmnop b", "twice"),
            ("# nothing", "no key"),
        ] {
            let e = Keys::parse(text, "k.txt").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("k.txt:"), "{e}");
            assert!(!e.contains("abcdefghijklmnop"), "{e}");
        }
        assert!(Keys::parse("abcdefghijklmnop a\nshort b", "k.txt")
            .unwrap_err()
            .to_string()
            .starts_with("k.txt:2:"));
    }
}
