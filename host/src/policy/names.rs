//! The policy of the capabilities granted by name: `secrets` (values the
//! operator configured, read through `bulkhead:tool/secrets`, see
//! `caps::secrets`) and `env` (session environment variables a tool may
//! read, set up in its WASI context by `caps`). Pure code.
//!
//! A name is granted when every layer lists it; a narrowing keeps a subset.

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes: env and secret names.
pub fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks every name's shape.
pub fn validate(names: &[String]) -> Result<(), String> {
    match names.iter().find(|n| !is_var_name(n)) {
        Some(bad) => Err(format!("{bad:?} is not a name like FOO_BAR")),
        None => Ok(()),
    }
}

/// The names both lists hold, in `mine`'s order.
pub fn intersect(mine: &[String], policy: &[String]) -> Vec<String> {
    mine.iter().filter(|n| policy.contains(n)).cloned().collect()
}

/// A narrowing to `want`, each of which must be granted; `field` names the
/// capability in the error.
pub fn narrow(field: &str, mine: &[String], want: &[String]) -> Result<Vec<String>, String> {
    match want.iter().find(|w| !mine.contains(w)) {
        Some(extra) => Err(format!("{field} {extra:?} is not within the grant")),
        None => Ok(want.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_name_is_letters_digits_and_underscores_not_starting_with_a_digit() {
        let cases = [
            ("TZ", true),
            ("_X1", true),
            ("api_key", true),
            ("1BAD", false),
            ("A-B", false),
            ("", false),
            ("A B", false),
            ("É", false),
        ];
        for (name, ok) in cases {
            assert_eq!(is_var_name(name), ok, "{name:?}");
        }
        assert!(is_var_name(&"A".repeat(128)));
        assert!(!is_var_name(&"A".repeat(129)));
    }

    #[test]
    fn a_name_is_granted_only_when_every_layer_lists_it() {
        assert_eq!(intersect(&names(&["A", "B", "C"]), &names(&["C", "A", "Z"])), names(&["A", "C"]));
        assert_eq!(narrow("secrets", &names(&["A", "B"]), &names(&["B"])), Ok(names(&["B"])));
        let e = narrow("env", &names(&["A"]), &names(&["TZ"])).unwrap_err();
        assert_eq!(e, "env \"TZ\" is not within the grant");
    }
}
